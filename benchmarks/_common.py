"""What the rlxf-versus-TRL benchmarks (ppo_s.py, rm_s.py, sft_s.py) share.

Each benchmark runs rlxf and a pinned TRL release on the same workload, each side in
its own fresh process, alternating sides round by round so that a load change on the
machine hits both. The driver (this venv, with rlxf) builds the tiny model and the
data once; the peer runs in its own virtualenv under ``benchmarks/.peers/NAME/``
(created on first use), so TRL may pin whatever transformers it needs.

Measured per process: the wall-clock time at the end of every training step, from a
hook inside the training loop on each side (never the process's start-up), and the
peak resident memory of that process alone (``os.wait4`` returns the rusage of one
child). Model-FLOPs utilisation divides the workload's model FLOPs by the step time
and by this machine's fp32 matrix-multiply peak, measured in the same run.

This module imports only the standard library at the top: the peer's processes,
which have no rlxf, import it too.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / ".peers"
TORCH = "torch==2.13.0"  # the CPU build from the local wheel; an unpinned torch pulls CUDA
MATMUL_SIZE = 2048


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class Shape:
    """The GPT-2 shape of issue #7's workloads."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    vocab: int = 2048
    positions: int = 256

    def matmul_params(self, lm_head: bool) -> int:
        """N of the 6·N·tokens rule: the weights of the matrix multiplies one token passes.

        Per layer 12·d² (attention q, k, v and output: 4·d²; MLP d→4d→d: 8·d²), plus V·d
        for the LM head (tied to the token embedding) when the model has one; a reward
        or value head adds d. Embedding look-ups, norms, biases and the attention-score
        products (2·T·d per token per layer) are not counted (Kaplan et al. 2020, §2.1).
        """
        d = self.hidden
        return 12 * self.layers * d * d + (self.vocab * d if lm_head else d)


SPECIAL = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}


def word(i: int) -> str:
    return f"w{i}"


def build_tokenizer(vocab: int):
    """A word-level tokenizer: 3 special tokens and words ``w0 … w{vocab-4}``.

    One word is exactly one token on both sides, so "a prompt of 24 tokens" is 24
    words whichever library tokenizes it, and decoded answers re-tokenize to the same
    length (rlxf re-tokenizes answer text for the reward model).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = list(SPECIAL.values()) + [word(i) for i in range(vocab - len(SPECIAL))]
    core = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token=SPECIAL["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=1024,
                                   clean_up_tokenization_spaces=False, **SPECIAL)


def build_models(out: Path, shape: Shape, seed: int, *, reward: bool = False) -> dict:
    """Save a randomly initialised GPT-2 (``out/policy``) and, if asked, a reward model
    with the same backbone shape (``out/reward``), each with the tokenizer.

    The answer length is fixed by banning the special tokens from sampling, so that it
    never emits EOS (nor pad) and every answer runs to the maximum length on both sides:
    TRL reads the ban from the saved ``generation_config.json`` (transformers merges a
    model's generation config into the one a trainer passes); rlxf, which does not read
    it, is given the same ids as ``rollout.suppress_tokens`` (``specials`` in the result).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(shape.vocab)
    specials = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL.values()]
    config = GPT2Config(vocab_size=shape.vocab, n_positions=shape.positions, n_embd=shape.hidden,
                        n_layer=shape.layers, n_head=shape.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=specials[0], eos_token_id=specials[0],
                        pad_token_id=specials[1])
    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(config)
    policy.generation_config.suppress_tokens = specials  # TRL samples with it; rlxf is told rollout.suppress_tokens
    paths = {"policy": str(out / "policy"), "specials": specials}
    policy.save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    if reward:
        torch.manual_seed(seed + 1)
        config.num_labels = 1
        rm = AutoModelForSequenceClassification.from_config(config)
        paths["reward"] = str(out / "reward")
        rm.save_pretrained(paths["reward"])
        tokenizer.save_pretrained(paths["reward"])
    return paths


def random_words(rng: random.Random, n: int, shape: Shape) -> str:
    return " ".join(word(rng.randrange(shape.vocab - len(SPECIAL))) for _ in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the peer's virtualenv

def peer_python(name: str, requirements: list[str]) -> str:
    """The Python of ``benchmarks/.peers/NAME``, created with ``torch==2.13.0`` (the same
    CPU build as ours) and ``requirements`` on first use."""
    venv = PEERS / name
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    wanted = "\n".join([TORCH, *requirements]) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return str(python)
    print(f"setting up {venv} ({', '.join(requirements)}); the first time takes a few minutes", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    # torch first and alone, so that the requirements never pull another build of it
    subprocess.run(pip + [TORCH], check=True)
    subprocess.run(pip + [TORCH, *requirements], check=True)
    marker.write_text(wanted)
    return str(python)


# ----------------------------------------------------------------------------- running one side

def child_env(threads: int) -> dict[str, str]:
    """The same thread count and offline settings for both sides."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               TRL_EXPERIMENTAL_SILENCE="1", WANDB_DISABLED="true", PYTHONHASHSEED="0")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_side(python: str, script: str, side: str, spec: dict, work: Path, threads: int) -> dict:
    """Run ``script --child SIDE`` in a fresh process; its result JSON plus ``peak_rss_mb``.

    ``os.wait4`` gives the rusage of exactly this child, so ``ru_maxrss`` is its own
    peak resident set (KiB on Linux), not the maximum over every child so far.
    """
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = work / "spec.json", work / "result.json", work / "log.txt"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path), "threads": threads}))
    with log_path.open("w") as log:
        proc = subprocess.Popen([python, script, "--child", side, "--spec", str(spec_path)], cwd=REPO,
                                env=child_env(threads), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text().splitlines()[-30:]
        raise SystemExit(f"{side} failed (exit {proc.returncode}); the end of {log_path}:\n" + "\n".join(tail))
    return {**json.loads(result_path.read_text()), "peak_rss_mb": usage.ru_maxrss / 1024}


def alternate(rounds: int, sides: dict[str, callable]) -> dict[str, list[dict]]:
    """Run every side once per round; odd rounds reverse the order (A B, B A, A B …)."""
    names = list(sides)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.time()
            result = sides[name]()
            runs[name].append(result)
            print(f"  round {r + 1}/{rounds}  {name:<5} {time.time() - t0:6.1f} s wall, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return runs


# ----------------------------------------------------------------------------- hooks inside the training loops

def fresh_side(spec: dict) -> Path:
    """Start one side's measured process: its thread count, and an empty run directory
    beside its result file (returned)."""
    import shutil

    import torch

    torch.set_num_threads(spec["threads"])
    out = Path(spec["result"]).parent / "run"
    shutil.rmtree(out, ignore_errors=True)
    return out


def rlxf_mixed_precision(spec: dict) -> str:
    """rlxf's ``mixed_precision`` for the run's ``--precision``."""
    return "bf16" if spec.get("precision") == "bf16" else "no"


def trl_args(spec: dict, out: Path) -> dict:
    """The TrainingArguments every TRL side shares: the run's device (CPU unless the spec
    says cuda) and precision, no activation checkpointing (rlxf has none; TRL turns it on
    by default), no saving, logging integrations or data-loader workers."""
    return dict(output_dir=str(out), seed=spec["seed"], use_cpu=spec.get("device", "cpu") == "cpu",
                bf16=spec.get("precision") == "bf16", fp16=False, gradient_checkpointing=False, report_to="none",
                save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)


def trl_epoch_args(spec: dict, out: Path, *, lr: float, max_length: int) -> dict:
    """:func:`trl_args` plus what SFT-S and RM-S set alike: batch, epochs, learning rate
    with a cosine schedule, sequence length, no evaluation."""
    return dict(trl_args(spec, out), eval_strategy="no", logging_steps=10,
                per_device_train_batch_size=spec["batch_size"], num_train_epochs=spec["epochs"], learning_rate=lr,
                lr_scheduler_type="cosine", max_length=max_length)


def track_clock(prompts, answers, ended) -> list[float]:
    """An rlxf PPO ``track`` function: logs the wall-clock time into metrics.jsonl.

    rlxf calls it once per PPO step, just after the rollout; the gap between two
    calls is one whole step (update k, then rollout k+1).
    """
    return [time.time()] * len(answers)


class StepClock:
    """Wraps a stage's progress bar and records the time at which each loop step ends.

    For stages with no per-step hook (rlxf sft and reward): the loop is
    ``for step in bar: ...``, so the bar asking for the next step marks the end of the
    previous one. Nothing else about the loop changes.
    """

    def __init__(self) -> None:
        self.ends: list[float] = []

    def wrap(self, make_bar):
        clock = self

        class Bar:
            def __init__(self, bar) -> None:
                self.bar = bar

            def __iter__(self):
                for i, item in enumerate(self.bar):
                    if i:
                        clock.ends.append(time.time())
                    yield item
                clock.ends.append(time.time())

            def __getattr__(self, name):
                return getattr(self.bar, name)

        return lambda iterable, **kwargs: Bar(make_bar(iterable, **kwargs))


def trl_step_clock():
    """A transformers ``TrainerCallback`` recording the time of every ``on_step_end``."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.time())

    return Clock()


def epoch_seconds(ends: list[float], steps_per_epoch: int) -> list[float]:
    """Seconds of each epoch from the step-end times of one process.

    The first epoch is timed from the end of its first step (start-up and the first
    step's one-off costs excluded) and scaled by ``steps / (steps - 1)``.
    """
    n = steps_per_epoch
    if len(ends) < n or n < 2:
        raise ValueError(f"{len(ends)} step times for epochs of {n} steps")
    spans = [(ends[n - 1] - ends[0]) * n / (n - 1)]
    spans += [ends[(e + 1) * n - 1] - ends[e * n - 1] for e in range(1, len(ends) // n)]
    return spans


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in names}


def write_result(spec: dict, **fields) -> None:
    Path(spec["result"]).write_text(json.dumps(fields))


# ----------------------------------------------------------------------------- the machine

def matmul_peak_flops(threads: int, precision: str = "fp32", size: int | None = None, repeats: int = 10,
                      device: str = "cpu") -> float:
    """FLOP/s of the best of ``repeats`` timed ``size``² matrix multiplies (2·n³ each) in
    ``precision`` (fp32 or bf16) on ``device``, with the thread count the benchmarks use:
    the peak that MFU is measured against. ``size`` defaults to 2048 on the CPU and 8192
    on a GPU (smaller products do not fill one)."""
    import torch

    torch.set_num_threads(threads)
    size = size or (MATMUL_SIZE if device == "cpu" else 4 * MATMUL_SIZE)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b  # warm-up: first-call allocation and kernel selection
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def gpu_peak(spec: dict) -> dict:
    """``{"peak_gpu_mb": ...}``, this process's peak of allocated GPU memory, for a run on
    CUDA; nothing on the CPU."""
    if spec.get("device") != "cuda":
        return {}
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


# ----------------------------------------------------------------------------- the report

@dataclass
class Side:
    """One side's summary over all its runs."""

    name: str
    version: str
    runs: int
    samples: int  # measured steps (or epochs) pooled over runs
    seconds: float  # median seconds per unit
    seconds_min: float
    seconds_max: float
    peak_rss_mb: float  # median over runs of each process's peak
    mfu: float
    run_seconds: list[float]  # each run's (round's) median
    run_rss_mb: list[float]  # each run's peak


def summarize(name: str, version: str, runs: list[dict], per_run: list[list[float]], flops: float,
              peak: float) -> Side:
    """``per_run``: the measured seconds of each run (one run per round), pooled for the median."""
    samples = [x for run in per_run for x in run]
    med = statistics.median(samples)
    return Side(name, version, len(runs), len(samples), med, min(samples), max(samples),
                statistics.median(r["peak_rss_mb"] for r in runs), flops / med / peak,
                [statistics.median(run) for run in per_run], [r["peak_rss_mb"] for r in runs])


def add_precision_argument(parser) -> None:
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32 on both sides, or bf16 mixed precision on both sides (rlxf mixed_precision=bf16, "
                             "TRL bf16=True): autocast matmuls, float32 weights")


def precision_words(precision: str) -> str:
    return "fp32" if precision == "fp32" else "bf16 mixed precision (autocast; float32 weights and optimiser)"


def report(benchmark: str, unit: str, header: list[str], ours: Side, peer: Side, *, flops: float,
           flops_formula: str, peak: float, targets: dict[str, float], extra: dict, precision: str = "fp32") -> None:
    """Print the table, then one JSON line with both sides' medians and the ratios."""
    time_ratio, rss_ratio = ours.seconds / peer.seconds, ours.peak_rss_mb / peer.peak_rss_mb
    print()
    for line in header:
        print(line)
    print(f"{'side':<6} {'version':<26} {'runs':>4} {'n':>4} {'s/' + unit + ' median':>16} "
          f"{'[min, max]':>17} {'peak RSS MB':>12} {'MFU':>7}")
    for s in (ours, peer):
        print(f"{s.name:<6} {s.version:<26} {s.runs:>4} {s.samples:>4} {s.seconds:>16.3f} "
              f"{f'[{s.seconds_min:.3f}, {s.seconds_max:.3f}]':>17} {s.peak_rss_mb:>12.0f} {s.mfu:>6.2%}")
    checks = {"time_ratio": time_ratio, "rss_ratio": rss_ratio}
    line = "  ".join(f"{k} {v:.3f}" + (f" (target ≤ {targets[k]}: {'met' if v <= targets[k] else 'NOT met'})"
                                      if k in targets else "") for k, v in checks.items())
    print(f"rlxf / {peer.name}: {line}")
    by_round = {"time_ratio_by_round": [a / b for a, b in zip(ours.run_seconds, peer.run_seconds)],
                "rss_ratio_by_round": [a / b for a, b in zip(ours.run_rss_mb, peer.run_rss_mb)]}
    print("round by round (each side's median in that round): time ratio "
          + " ".join(f"{v:.3f}" for v in by_round["time_ratio_by_round"]) + ", RSS ratio "
          + " ".join(f"{v:.3f}" for v in by_round["rss_ratio_by_round"]))
    print(f"model FLOPs per {unit}: {flops / 1e9:.2f} GFLOP = {flops_formula}")
    print(f"{precision} matmul peak: {peak / 1e9:.1f} GFLOP/s (square matmul, best of 10, same threads); "
          f"{load_average()}")
    print(json.dumps({"benchmark": benchmark, "unit": unit, "rlxf": asdict(ours), "peer": asdict(peer),
                      "time_ratio": round(time_ratio, 4), "rss_ratio": round(rss_ratio, 4),
                      **{k: [round(v, 4) for v in vs] for k, vs in by_round.items()},
                      "targets": targets, "model_flops_per_unit": flops, "flops_formula": flops_formula,
                      "precision": precision, "matmul_peak_flops": peak, "load": load_average(), **extra}))


# ----------------------------------------------------------------------------- SFT-S and RM-S

def epoch_benchmark(script: str, name: str, *, about: str, data_rows, flops_of, header_of) -> None:
    """The driver of an epoch benchmark (sft_s.py, rm_s.py): rlxf against TRL 1.16.

    ``name`` (SFT-S) opens the progress lines; ``about`` is the --help description (what
    is measured, against which peer). ``data_rows(rng, shape, n)`` makes the training
    rows; ``flops_of(shape, n)`` gives ``(model FLOPs per epoch, the formula in words)``;
    ``header_of(args, shape)`` the lines above the table.
    """
    import argparse

    parser = argparse.ArgumentParser(description=about)
    parser.add_argument("--rounds", type=int, default=2, help="rlxf/TRL process pairs, alternating which goes first")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per process")
    parser.add_argument("--examples", type=int, default=512, help="training rows (pairs or demonstrations)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimiser step, both sides")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads, both sides")
    parser.add_argument("--work", default=f"runs/bench-{Path(script).stem.replace('_', '-')}",
                        help="models, data and run directories")
    parser.add_argument("--seed", type=int, default=0)
    add_precision_argument(parser)
    parser.add_argument("--child", choices=("rlxf", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        module = sys.modules["__main__"]
        spec = json.loads(Path(args.spec).read_text())
        return {"rlxf": module.rlxf_side, "trl": module.trl_side}[args.child](spec)

    work = (REPO / args.work).resolve()
    peer = peer_python("trl-1.16.0", ["trl==1.16.0"])
    shape = Shape()
    paths = build_models(work / "models", shape, args.seed)
    data = write_jsonl(work / "train.jsonl", data_rows(random.Random(args.seed), shape, args.examples))
    steps = -(-args.examples // args.batch_size)
    spec = {**paths, "data": data, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
            "precision": args.precision}
    peak = matmul_peak_flops(args.threads, args.precision)
    print(f"{name}: {args.rounds} rounds × {args.epochs} epoch(s) per side, {args.precision}; "
          f"{load_average()}", flush=True)
    runs = alternate(args.rounds, {
        "rlxf": lambda: run_side(sys.executable, script, "rlxf", spec, work / "rlxf", args.threads),
        "trl": lambda: run_side(peer, script, "trl", spec, work / "trl", args.threads),
    })
    peak = max(peak, matmul_peak_flops(args.threads, args.precision))
    flops, formula = flops_of(shape, args.examples)
    sides = [summarize(label, runs[key][0]["version"], runs[key],
                       [epoch_seconds(r["step_ends"], steps) for r in runs[key]], flops, peak)
             for key, label in (("rlxf", "rlxf"), ("trl", "TRL"))]
    report(Path(script).stem.replace("_", "-"), "epoch", header_of(args, shape), *sides, flops=flops,
           flops_formula=formula, peak=peak, targets={"time_ratio": 0.66}, precision=args.precision,
           extra={"sequence_tokens": {k: runs[k][0]["sequence_tokens"] for k in runs}, "threads": args.threads,
                  "rounds": args.rounds, "epochs_per_process": args.epochs, "steps_per_epoch": steps,
                  "batch_size": args.batch_size})
