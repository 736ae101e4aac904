"""Running a stage on several processes with ``accelerate launch`` (DDP, FSDP, DeepSpeed).

The stages stay plain loops; this module holds the few things that change when N
processes share the work (accelerate does the rest: process groups, DDP/FSDP/DeepSpeed
wrapping, the gradient all-reduce).

- **Same global batch.** ``batch_size`` (and ``rollout.batch_size``) stay *global*:
  every process computes the same global batch indices and takes every N-th item
  (:func:`share`). Losses are scaled so that the all-reduced (averaged) gradient is the
  gradient of the single-process loss: a process multiplies its part of the loss by
  ``N × (its items or tokens) / (the global count)``.
- **Lockstep.** Every process runs the same number of forward/backward passes (DDP
  and FSDP synchronise inside them). A process whose share of a short batch is empty
  reruns the batch's first item with weight 0.
- **Main writes.** Only the main process writes the run directory; the others read it.
- **Seeds.** Process ``r`` is seeded with ``seed + r`` so that processes sample
  different answers; DDP/FSDP copy process 0's initial weights to the others, so a
  randomly initialised head (reward model, LoRA) starts the same everywhere.

With one process every helper returns its input unchanged, so a plain ``rlxf sft``
computes exactly what it computed before this module existed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlxf.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from rlxf.runs import Run

log = logging.getLogger("rlxf")


def make_accelerator(device: str) -> "Accelerator":
    """The run's :class:`accelerate.Accelerator`; ``device`` is the stage's ``device`` key.

    Device placement stays with the stage: a single process uses ``device`` (so
    ``device=cuda:1`` keeps working); under ``accelerate launch`` each process uses the
    device accelerate assigned it. Buffers (causal masks, rotary tables) are constants,
    so DDP does not broadcast them before every forward pass: with that off, a forward
    pass without gradients (evaluation, rollouts) needs no other process.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # "auto" on a machine without CUDA is the CPU: told otherwise, accelerate forms no gloo
    # process group under a launch, and every process would train alone
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu, device_placement=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ConfigError(f"launched as {launched} processes, but accelerate joined none of them into one run "
                          f"with device={device}; use device=cpu for CPU processes (gloo), or auto/cuda on GPUs")
    return accelerator


def is_sharded(accelerator: "Accelerator") -> bool:
    """True under FSDP or DeepSpeed: weights or optimiser state are split over processes."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def configure_deepspeed(accelerator: "Accelerator", batch_size: int, grad_accum: int) -> None:
    """Tell DeepSpeed the per-process micro-batch (accelerate reads it from a prepared
    dataloader, which rlxf does not use); refuse ``grad_accum > 1``, because DeepSpeed's
    engine steps the optimiser inside every ``backward`` of a loop like rlxf's."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if grad_accum > 1:
        raise ConfigError("under DeepSpeed set grad_accum=1 and raise batch_size instead (DeepSpeed steps the "
                          "optimiser after every backward pass)")
    plugin = accelerator.state.deepspeed_plugin
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = max(1, batch_size // accelerator.num_processes)


def share(items: list, accelerator: "Accelerator") -> tuple[list, float]:
    """This process's share of one global batch, ``items[rank::N]``, and its weight.

    The weight is 1.0, or 0.0 when the batch has fewer items than processes and this
    one got none: it then works on ``items[:1]`` so that it still takes part in the
    gradient synchronisation, and the caller multiplies its loss and counts by 0.
    """
    mine = items[accelerator.process_index::accelerator.num_processes]
    return (mine, 1.0) if mine else (items[:1], 0.0)


def sum_over_processes(values: list[float], accelerator: "Accelerator") -> list[float]:
    """Element-wise sum of ``values`` over processes (float64; unchanged with one process)."""
    if accelerator.num_processes == 1:
        return values
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return total.tolist()


def gather_lists(values: list, accelerator: "Accelerator") -> list:
    """All processes' lists, concatenated in process order (the same list with one process)."""
    from accelerate.utils import gather_object

    return gather_object(values) if accelerator.num_processes > 1 else values


def gather_rows(x: torch.Tensor, accelerator: "Accelerator") -> torch.Tensor:
    """All processes' rows of ``x`` (B_r, ...) concatenated in process order: (B, ...).

    Rows may differ in their trailing length (answers of different lengths); shorter
    ones are padded with 0, which callers mask out.
    """
    if accelerator.num_processes == 1:
        return x
    return accelerator.gather(accelerator.pad_across_processes(x.contiguous(), dim=1) if x.dim() > 1 else x)


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, accelerator: "Accelerator",
                         shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """:func:`rlxf.rl.masked_whiten` with the mean and variance taken over the real tokens
    of *all* processes' rows, so N processes whiten as one process does the whole batch.

    mean = Σ x·m / Σ m;  var = Σ (x − mean)²·m / Σ m · n / (n − 1)  (n = Σ m, Bessel).
    With one process this is :func:`rlxf.rl.masked_whiten` itself.
    """
    from rlxf.rl import masked_whiten

    if accelerator.num_processes == 1:
        return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
    keep = mask.bool()
    total, count = sum_over_processes([float(torch.where(keep, x, 0.0).sum()), float(keep.sum())], accelerator)
    if count < 2:
        raise ValueError(f"whitening needs at least 2 real tokens over all processes, got {count:.0f}")
    mean = total / count
    squares = sum_over_processes([float(torch.where(keep, (x - mean) ** 2, 0.0).sum())], accelerator)[0]
    var = squares / count * count / (count - 1)
    whitened = (x - mean) * (var + eps) ** -0.5  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, 0.0)


def rng_state() -> dict:
    import random

    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate()}


def start_stage(cfg, accelerator: "Accelerator") -> tuple["Run", torch.device, Any]:
    """A training stage's run directory, this process's device and ``cfg`` as it runs.

    The device is ``cfg.device`` for a single process, and the one accelerate assigned
    under ``accelerate launch``; ``mixed_precision='auto'`` is resolved for it (the
    returned config, the one saved as config.yaml, says 'bf16' or 'no'; a complete run's
    says what it ran with, wherever it is reopened), and bf16 is checked against it
    before any work. The directory is opened (created, or checked against that config) by
    the main process only; the others wait for it and then only read it. A complete run
    is logged and returned as it is (the caller returns its summary); otherwise this
    process is seeded with ``cfg.seed + rank``.
    """
    from rlxf.runs import Run
    from rlxf.training import check_mixed_precision, precision_for, resolve_device, seed_everything

    device = accelerator.device if accelerator.num_processes > 1 else resolve_device(cfg.device)
    cfg = replace(cfg, mixed_precision=precision_for(cfg.mixed_precision, device, run=cfg.out))
    run = Run.open(cfg.out, cfg) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    run = run or Run(Path(cfg.out))
    if run.complete:
        log.info("%s is already complete; delete it to train again", run.out)
    else:
        seed_everything(cfg.seed + accelerator.process_index)
        check_mixed_precision(cfg.mixed_precision, device)
    return run, device, cfg


def save_final(wrapped, tokenizer, out: Path, accelerator: "Accelerator") -> None:
    """Save the trained model (``wrapped``: as returned by ``prepare``) in Hugging Face
    format from the main process.

    Every process must call this: under FSDP or DeepSpeed ZeRO-3 the full weights are
    gathered from all of them first (``Accelerator.get_state_dict``).
    """
    from rlxf.models.loading import save_model

    plain = accelerator.unwrap_model(wrapped)
    prefix = ""
    if isinstance(plain, TokenValues):
        plain, prefix = plain.model, "model."
    if is_sharded(accelerator):
        state = accelerator.get_state_dict(wrapped)
        if accelerator.is_main_process:
            save_model(plain, tokenizer, out, state_dict={k.removeprefix(prefix): v for k, v in state.items()})
    elif accelerator.is_main_process:
        save_model(plain, tokenizer, out)
    accelerator.wait_for_everyone()


def refuse_sharded_lora(accelerator: "Accelerator", lora: bool) -> None:
    if lora and is_sharded(accelerator):
        raise ConfigError("LoRA under FSDP or DeepSpeed is not supported; LoRA models fit one GPU: "
                          "launch with DDP (examples/accelerate/ddp_gpu.yaml)")


def check_divisible(accelerator: "Accelerator", **sizes: int) -> None:
    """Refuse global batch sizes that N processes cannot split evenly (PPO needs equal shares)."""
    n = accelerator.num_processes
    for name, size in sizes.items():
        if size % n:
            raise ConfigError(f"{name} ({size}) must be a multiple of the number of processes ({n}); "
                              f"each process takes {name} / {n}")


class TokenValues(torch.nn.Module):
    """:func:`rlxf.models.reward.token_values` as a module's forward.

    DDP and FSDP synchronise gradients only for computations that go through the
    wrapped module's ``forward``; ``token_values`` reads the backbone and the score head
    directly, so the reward and value models are prepared wrapped in this.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, suffix_ids: torch.Tensor | None = None,
                suffix_mask: torch.Tensor | None = None, owner: torch.Tensor | None = None,
                return_hidden: bool = False):
        """(B, T) values of ``input_ids``; with ``suffix_*`` and ``owner``, ``input_ids`` are
        shared prefixes and the result is the suffixes' (N, S) values
        (:func:`rlxf.models.reward.shared_prefix_values`). ``return_hidden`` adds the
        backbone's last hidden states at the same positions."""
        from rlxf.models.reward import shared_prefix_values, token_values

        if suffix_ids is None:
            return token_values(self.model, input_ids, attention_mask, return_hidden=return_hidden)
        return shared_prefix_values(self.model, input_ids, attention_mask, suffix_ids, suffix_mask, owner,
                                    return_hidden=return_hidden)
