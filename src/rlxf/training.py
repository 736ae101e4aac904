"""What every training stage shares: the loop settings, seeding, optimiser, checkpoints.

A stage owns its loop (STYLE: plain loops, no Trainer subclassing); these are the
pieces that would otherwise be written three times. Resume is exact: a checkpoint
holds the trainable weights, the optimiser and scheduler state and every RNG state,
and the data order is a pure function of ``(seed, epoch)``, so step ``k`` sees the
same batch whether or not the run was interrupted before it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlxf.errors import ConfigError


PRECISIONS = ("no", "bf16", "auto")


@dataclass(kw_only=True)
class TrainConfig:
    out: str
    """Run directory (config.yaml, metrics.jsonl, checkpoints/, final/, summary.json)."""
    seed: int = 0
    """Seed for data order, initialisation and sampling."""
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Learning-rate decay after warm-up."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up from 0 to lr."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""
    batch_size: int = 8
    """Examples per micro-batch (one forward/backward)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; the effective batch is batch_size × grad_accum."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed); ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimiser steps to run; null derives them from epochs."""
    log_every: int = 10
    """Write a metrics.jsonl row every this many steps."""
    eval_every: int | None = None
    """Evaluate every this many steps (and always at the end); null evaluates only at the end."""
    save_every: int | None = None
    """Checkpoint every this many steps; null checkpoints only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """'bf16': matrix multiplies in bfloat16 (torch.autocast); weights, optimiser state,
    log-probs and losses stay float32. Several times faster on CPUs with AVX512-BF16 or
    AMX and on GPUs from Ampere on; 'no' computes everything in the weights' dtype;
    'auto': bf16 where the device computes it natively, else 'no' (config.yaml records
    which ran, so a resume on a machine that resolves it otherwise is refused)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be ≥ 1 or null, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0 when max_steps is null, got {self.epochs}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be 'no', 'bf16' or 'auto', got {self.mixed_precision!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {list(self.adam_betas)}")


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The device a ``device`` key names: ``auto`` (CUDA when there is a GPU, else the
    CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. One this machine lacks is a
    :class:`ConfigError` here, before any model is loaded, naming the config ``key`` that
    gave it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
            raise ConfigError(f"{key}={name}: this PyTorch ({torch.__version__}) {build}; use {key}=cpu "
                              "(or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={name}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name}: MPS (Apple GPUs) is not available here; use {key}=cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}={name}: rlxf runs on cpu, cuda or mps, not {device.type}")
    return device


def autocast(mixed_precision: str, device: torch.device):
    """The context for a stage's forward passes: bfloat16 autocast with
    ``mixed_precision='bf16'``, a no-op with ``'no'``.

    Under autocast, matrix multiplies (linear layers, attention) run in bfloat16 while
    element-wise work follows its inputs, so the residual stream of a float32 model
    stays float32. Callers cast logits and values to float32 before a loss, and run
    ``backward`` outside the context.
    """
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"autocast takes 'no' or 'bf16', got {mixed_precision!r}: resolve 'auto' with precision_for")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively: a CUDA GPU of compute
    capability 8.0 or later (Ampere on; a T4 or V100 only emulates it), or a CPU with
    AVX512-BF16 or AMX. Elsewhere they are emulated, and far slower than float32 (below)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_native_bf16()


def cpu_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions: ``avx512_bf16`` or ``amx_bf16`` among the
    flags of /proc/cpuinfo (x86), ``bf16`` among its features (ARM). oneDNN's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``, asked where there is no /proc/cpuinfo)
    also says yes for any AVX-512 CPU (Skylake, Cascade Lake), where bf16 is converted,
    not computed."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # a private op: may be absent
        return native is not None and bool(native())
    flags = {word for line in text.splitlines() if line.lower().startswith(("flags", "features"))
             for word in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def precision_for(mixed_precision: str, device: torch.device, run: str | Path | None = None) -> str:
    """``mixed_precision`` with 'auto' resolved for ``device``: 'bf16' where it computes
    bfloat16 natively (:func:`native_bf16`), else 'no'; where the folder ``run`` holds a
    complete run, what that run ran with (it computes nothing more, so reopening it on
    another machine returns it as it is). 'no' and 'bf16' pass through."""
    if mixed_precision != "auto":
        return mixed_precision
    resolved = "bf16" if device.type in ("cpu", "cuda") and native_bf16(device) else "no"
    if run is None:
        return resolved
    from rlxf.runs import completed_setting

    return completed_setting(run, "mixed_precision", resolved)


def check_mixed_precision(mixed_precision: str, device: torch.device) -> None:
    """Refuse bf16 where the device cannot compute it; warn where it can only emulate it."""
    if mixed_precision != "bf16":
        return
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"mixed_precision=bf16 runs on CPU and CUDA devices, not {device.type}; "
                          "set mixed_precision=no")
    if device.type == "cuda" and not native_bf16(device):
        with torch.cuda.device(device):
            emulated = torch.cuda.is_bf16_supported(including_emulation=True)
        if not emulated:
            raise ConfigError(f"mixed_precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                              "set mixed_precision=no")
        logging.getLogger("rlxf").warning(
            "mixed_precision=bf16: %s computes bfloat16 only by emulation (compute capability below 8.0), slower "
            "than float32; set mixed_precision=no", torch.cuda.get_device_name(device))
    if device.type == "cpu" and not native_bf16(device):
        # measured on an AVX2 AMD EPYC (2 threads): a 448×256 by 256×768 matmul takes 14 ms in bf16
        # with the weight in nn.Linear's layout and 140 ms in GPT-2's Conv1D layout, against 1.3 ms
        # in float32; a GPT-2 4×256 forward pass 2.5 s against 0.09 s
        logging.getLogger("rlxf").warning(
            "mixed_precision=bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 matmuls are "
            "emulated, 10-100x slower than float32; set mixed_precision=no")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * n_examples / per_step))


def make_optimizer(params, cfg: TrainConfig, n_steps: int):
    """AdamW with the configured warm-up and decay (:func:`lr_factor`).

    ``params``: parameters (those that require grad are trained) or parameter groups
    (dicts, a group may set its own ``lr``).
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [g for g in params if g["params"]]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    if not groups or not groups[0]["params"]:
        raise ConfigError("the model has no trainable parameters")
    # the fused kernel (one pass over all tensors) where it applies; PyTorch's CPU default is a per-tensor loop
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                            fused=fused or None, foreach=None if fused else True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, cfg.lr_schedule, cfg.warmup_steps, n_steps))
    return opt, sched


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """The learning rate at optimiser step ``step`` as a share of the peak.

    Linear warm-up from 0 over ``warmup`` steps, then 1 (``constant``), a straight line
    to 0 at ``total`` (``linear``), or half a cosine to 0 at ``total`` (``cosine``).
    (Written here rather than taken from transformers: its "constant" schedule ignores
    the warm-up, and importing its schedulers loads its Trainer and peft, ~100 MB.)
    """
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def grad_sync(accelerator, model: torch.nn.Module, *, last: bool):
    """The context of one micro-batch's forward and backward passes when an optimiser step
    runs several: under DDP every micro-batch but the ``last`` keeps its gradients on its
    own process (``no_sync``) and the last backward all-reduces their sum, one all-reduce
    per step instead of one per micro-batch (the average of the processes' sums is the sum
    of their averages). ``model`` is the wrapper ``prepare`` returned; the forward pass must
    run inside the context too, as DDP decides in it whether the backward synchronises.

    A no-op with one process, and under FSDP and DeepSpeed: their ``no_sync`` would hold
    every process's unsharded gradients until the step, the memory sharding saves.
    """
    from contextlib import nullcontext

    from rlxf.distributed import is_sharded

    if last or accelerator.num_processes == 1 or is_sharded(accelerator):
        return nullcontext()
    return accelerator.no_sync(model)


def micro_batch_indices(n_examples: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Example indices of micro-batch ``start``, ``start + 1``, ... for ever.

    Each epoch is a fresh permutation drawn from a generator seeded by ``(seed, epoch)``,
    so micro-batch ``i`` is the same whatever happened before it (exact resume). The
    last micro-batch of an epoch may be short; batches never straddle two epochs.
    """
    per_epoch = math.ceil(n_examples / batch_size)
    i = start
    while True:
        epoch, k = divmod(i, per_epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n_examples, generator=g).tolist()
        for j in range(k, per_epoch):
            yield order[j * batch_size:(j + 1) * batch_size]
        i = (epoch + 1) * per_epoch


def full_batch_indices(n_examples: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Like :func:`micro_batch_indices`, but every batch has exactly ``batch_size``
    indices: the epochs' permutations are read as one stream, so a batch may span
    the end of one epoch and the start of the next (PPO needs equal rollout batches)."""
    epoch_cache: dict[int, list[int]] = {}

    def order(epoch: int) -> list[int]:
        if epoch not in epoch_cache:
            epoch_cache.clear()
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            epoch_cache[epoch] = torch.randperm(n_examples, generator=g).tolist()
        return epoch_cache[epoch]

    k = start
    while True:
        positions = range(k * batch_size, (k + 1) * batch_size)
        yield [order(p // n_examples)[p % n_examples] for p in positions]
        k += 1


# ----------------------------------------------------------------------------- checkpoints

def trainable_state(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for m, module in enumerate(modules):
        for name, p in module.named_parameters():
            if p.requires_grad:
                state[f"{m}.{name}"] = p.detach().contiguous().cpu()
    return state


def save_checkpoint(run, step: int, *, accelerator, modules: tuple[torch.nn.Module, ...], optimizer, scheduler,
                    keep: int, extra: dict | None = None) -> None:
    """Write checkpoint ``step`` of ``run``: trainable weights as safetensors; optimiser,
    scheduler, every process's RNG state and ``extra`` in ``state.pt``.

    Every process calls this (their RNG states are gathered); the main process writes.
    Under FSDP or DeepSpeed the weights and optimiser state are split over the processes,
    so each writes its part with ``Accelerator.save_state`` into ``accelerate/`` instead.
    ``modules`` are the plain models, not the DDP/FSDP wrappers.
    """
    from safetensors.torch import save_file

    from rlxf.distributed import gather_lists, is_sharded, rng_state

    rngs = gather_lists([rng_state()], accelerator)  # one per process, in process order
    # the name Run.new_checkpoint_dir gives; only the main process creates the directory
    tmp = run.new_checkpoint_dir(step) if accelerator.is_main_process else run.checkpoints / f"step-{step:06d}.tmp"
    if is_sharded(accelerator):
        accelerator.wait_for_everyone()  # the main process has created tmp
        accelerator.save_state(str(tmp / "accelerate"))
    if accelerator.is_main_process:
        if not is_sharded(accelerator):
            save_file(trainable_state(*modules), str(tmp / "trainable.safetensors"))
        torch.save({
            "step": step,
            "optimizer": None if is_sharded(accelerator) else optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_torch": rngs[0]["torch"],
            "rng_cuda": rngs[0]["cuda"],
            "rng_python": rngs[0]["python"],
            "rng_other_processes": rngs[1:],
            "extra": extra or {},
        }, tmp / "state.pt")
        run.commit_checkpoint(tmp, keep)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, *, accelerator, modules: tuple[torch.nn.Module, ...], optimizer,
                    scheduler) -> tuple[int, dict]:
    """Restore what :func:`save_checkpoint` wrote; returns ``(step, extra)``. Every process calls it.

    ``state.pt`` is read with ``weights_only=True``: tensors and plain containers only,
    never arbitrary pickled objects.
    """
    from safetensors.torch import load_file

    from rlxf.distributed import is_sharded

    state = torch.load(path / "state.pt", weights_only=True)
    if is_sharded(accelerator):
        accelerator.load_state(str(path / "accelerate"))
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        with torch.no_grad():
            for m, module in enumerate(modules):
                for name, p in module.named_parameters():
                    if p.requires_grad:
                        p.copy_(weights[f"{m}.{name}"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rngs = [{"torch": state["rng_torch"], "cuda": state["rng_cuda"], "python": state["rng_python"]},
            *state.get("rng_other_processes", [])]
    if accelerator.process_index < len(rngs):  # a process the checkpoint has no state for keeps its seed
        rng = rngs[accelerator.process_index]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(_as_random_state(rng["python"]))
    if len(rngs) != accelerator.num_processes:  # said by process 0, the one that logs
        logging.getLogger("rlxf").warning(
            "%s was written by %d process(es) and resumes on %d: their random streams differ, so this run will "
            "not repeat an uninterrupted one exactly (resume with %d to repeat it)", path, len(rngs),
            accelerator.num_processes, len(rngs))
    return state["step"], state["extra"]


def resume(run, *, accelerator, modules: tuple[torch.nn.Module, ...], optimizer, scheduler
           ) -> tuple[int, dict | None]:
    """Restore the newest checkpoint of ``run`` if there is one and (main process) cut
    ``metrics.jsonl`` back to it; returns ``(step, extra)``, or ``(0, None)`` for a fresh start."""
    start, extra = 0, None
    if (ckpt := run.latest_checkpoint()) is not None:
        start, extra = load_checkpoint(ckpt, accelerator=accelerator, modules=modules, optimizer=optimizer,
                                       scheduler=scheduler)
        logging.getLogger("rlxf").info("resuming from %s (step %d)", ckpt, start)
    if accelerator.is_main_process:
        run.truncate_metrics(start)
    accelerator.wait_for_everyone()
    return start, extra


def _as_random_state(value):
    # weights_only loading turns the nested tuples of random.getstate() into lists
    version, internal, gauss = value
    return version, tuple(internal), gauss
