"""PPO-S and PPO-M (issue #7): seconds per PPO update and peak memory, rlxf against TRL 1.12's PPOTrainer.

The workload, identical on both sides: a randomly initialised GPT-2 (4 layers, hidden
256, 4 heads, vocabulary 2048) as policy and reference, a reward model of the same
shape that also initialises the value function; prompts of 24 tokens, answers of
exactly 32 tokens (sampling cannot emit EOS; see _common.build_models), 16 rollouts
per update, 4 PPO epochs over 2 minibatches of 8, k1 KL penalty with β = 0.05,
temperature 1, fp32 (or both bf16 with --precision bf16), the same thread count. TRL
1.12.0 is the last release with PPO (``trl.experimental.ppo``); it runs from its own
virtualenv, benchmarks/.peers/trl-1.12.0, or from ``--peer-python``.

    python benchmarks/ppo_s.py                           # 2 rounds × 4 updates per side
    python benchmarks/ppo_s.py --rounds 3 --updates 12   # longer
    python benchmarks/ppo_s.py --backend hf              # rlxf sampling with HF generate

rlxf samples with its own loop (``rollout.backend=rlxf``) unless ``--backend hf``.

PPO-M, the GPU workload (GPT-2 124M shape: 12 layers, 768 wide, 12 heads, vocabulary
50257; 64 rollouts of 64 prompt + 128 answer tokens per update; the same PPO settings),
adds tokens per second and each side's peak GPU memory to the report:

    python benchmarks/ppo_s.py --workload m --device cuda --precision bf16 --peer-python PY
    python benchmarks/ppo_s.py --workload m --rollouts 4 --answer-tokens 8 --updates 2 --rounds 1   # CPU smoke test

Per update time is the gap between two consecutive training-loop timestamps: rlxf's
``track`` hook (logged to metrics.jsonl once per step, after the rollout), TRL's
``on_step_end`` callback. The first update of every process is excluded (rlxf runs one
extra step so that both sides yield ``updates - 1`` whole steps per process).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PEER = ("trl-1.12.0", ["trl==1.12.0"])
KL_COEF, LR = 0.05, 1e-5


@dataclass(frozen=True)
class Workload:
    name: str
    shape: c.Shape
    prompt_tokens: int
    answer_tokens: int
    rollouts: int  # per update
    epochs: int = 4  # PPO epochs per update
    minibatches: int = 2  # per epoch

    def tokens(self) -> int:
        return self.rollouts * (self.prompt_tokens + self.answer_tokens)


WORKLOADS = {
    "s": Workload("PPO-S", c.Shape(), prompt_tokens=24, answer_tokens=32, rollouts=16),
    # issue #7's GPU workload: GPT-2 124M shape (its vocabulary and context length)
    "m": Workload("PPO-M", c.Shape(layers=12, hidden=768, heads=12, vocab=50257, positions=1024),
                  prompt_tokens=64, answer_tokens=128, rollouts=64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="s",
                        help="s: PPO-S (CPU; targets 0.33x time, 0.7x memory); m: PPO-M (GPT-2 124M shape, for a GPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both sides run here")
    parser.add_argument("--rounds", type=int, default=2, help="rlxf/TRL process pairs, alternating which goes first")
    parser.add_argument("--updates", type=int, default=4, help="PPO updates per process (the first is not timed)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads, both sides")
    parser.add_argument("--work", help="models, data and run directories (default runs/bench-ppo-WORKLOAD)")
    parser.add_argument("--seed", type=int, default=0)
    c.add_precision_argument(parser)
    parser.add_argument("--backend", choices=("rlxf", "hf"), default="rlxf",
                        help="rlxf's rollout.backend: its own sampling loop (default) or Hugging Face generate")
    parser.add_argument("--peer-python", help="a Python that imports trl 1.12.0 (default: benchmarks/.peers/"
                                              "trl-1.12.0, created on first use; needs the package index)")
    parser.add_argument("--rollouts", type=int, help="override the workload's rollouts per update (smoke tests)")
    parser.add_argument("--answer-tokens", type=int, help="override the workload's answer length (smoke tests)")
    parser.add_argument("--child", choices=("rlxf", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        return {"rlxf": rlxf_side, "trl": trl_side}[args.child](spec)
    if args.updates < 2:
        parser.error("--updates must be ≥ 2: the first update of every process is not timed")
    w = replace(WORKLOADS[args.workload], **{k: v for k, v in (("rollouts", args.rollouts),
                                                                 ("answer_tokens", args.answer_tokens)) if v})
    if w.rollouts % w.minibatches:
        parser.error(f"--rollouts must be a multiple of {w.minibatches} (the minibatches per epoch)")

    work = (c.REPO / (args.work or f"runs/bench-ppo-{args.workload}")).resolve()
    peer_python = args.peer_python or c.peer_python(*PEER)
    paths = c.build_models(work / "models", w.shape, args.seed, reward=True)
    rng = random.Random(args.seed)
    prompts = c.write_jsonl(work / "prompts.jsonl", [{"prompt": c.random_words(rng, w.prompt_tokens, w.shape)}
                                                     for _ in range(w.rollouts * (args.updates + 1))])
    spec = {**paths, "prompts": prompts, "updates": args.updates, "seed": args.seed, "precision": args.precision,
            "backend": args.backend, "device": args.device, "workload": asdict(w)}
    peak = c.matmul_peak_flops(args.threads, args.precision, device=args.device)
    print(f"{w.name}: {args.rounds} rounds × {args.updates} updates per side, {args.precision} on {args.device}; "
          f"{c.load_average()}", flush=True)
    runs = c.alternate(args.rounds, {
        "rlxf": lambda: c.run_side(sys.executable, __file__, "rlxf", spec, work / "rlxf", args.threads),
        "trl": lambda: c.run_side(peer_python, __file__, "trl", spec, work / "trl", args.threads),
    })
    peak = max(peak, c.matmul_peak_flops(args.threads, args.precision, device=args.device))

    n_lm, n_rm = w.shape.matmul_params(lm_head=True), w.shape.matmul_params(lm_head=False)
    # rollout: generation (≈ one forward per token), reference, reward and value forwards;
    # update: w.epochs passes of forward + backward through policy and value
    flops = w.tokens() * (2 * n_lm + 2 * n_lm + 2 * n_rm + 2 * n_rm + w.epochs * 6 * (n_lm + n_rm))
    formula = (f"B·T·(4·N_lm + 4·N_rm + {w.epochs}·6·(N_lm + N_rm)), B·T = {w.rollouts}·({w.prompt_tokens}+"
               f"{w.answer_tokens}), N_lm = 12·L·d² + V·d = {n_lm:,}, N_rm = 12·L·d² + d = {n_rm:,} "
               "(generation, reference, reward, value forwards at 2·N per token; 6·N per token trained)")
    ours = c.summarize("rlxf", runs["rlxf"][0]["version"], runs["rlxf"],
                       [r["step_seconds"] for r in runs["rlxf"]], flops, peak)
    peer = c.summarize("TRL", runs["trl"][0]["version"], runs["trl"],
                       [r["step_seconds"] for r in runs["trl"]], flops, peak)
    extra = {"answer_tokens": {"rlxf": runs["rlxf"][0]["answer_tokens"], "peer": runs["trl"][0]["answer_tokens"]},
             "tokens_per_second": {"rlxf": w.tokens() / ours.seconds, "peer": w.tokens() / peer.seconds},
             "workload": asdict(w), "device": args.device, "threads": args.threads, "rounds": args.rounds,
             "updates_per_process": args.updates, "rlxf_backend": args.backend}
    header = [
        f"{w.name}: GPT-2 {w.shape.layers}×{w.shape.hidden}, {w.shape.heads} heads, V={w.shape.vocab}, random init; "
        f"{w.rollouts} rollouts × ({w.prompt_tokens} prompt + {w.answer_tokens} answer tokens) per update; "
        f"{w.epochs} PPO epochs × {w.minibatches} minibatches; k1 KL β={KL_COEF}; "
        f"{c.precision_words(args.precision)}; {args.device}, {args.threads} threads; "
        f"rlxf samples with rollout.backend={args.backend}",
        f"seconds per PPO update (rollout + {w.epochs} epochs), first update of each process excluded; "
        "peak RSS = median over processes of each one's own peak; "
        f"tokens/s (B·T per update / s): rlxf {extra['tokens_per_second']['rlxf']:,.0f}, "
        f"TRL {extra['tokens_per_second']['peer']:,.0f}"]
    if args.device == "cuda":
        gpu = {side: statistics.median(r["peak_gpu_mb"] for r in runs[side]) for side in runs}
        extra["peak_gpu_mb"] = {"rlxf": gpu["rlxf"], "peer": gpu["trl"]}
        header.append(f"peak GPU memory (torch.cuda.max_memory_allocated, median over processes): "
                      f"rlxf {gpu['rlxf']:,.0f} MB, TRL {gpu['trl']:,.0f} MB, ratio {gpu['rlxf'] / gpu['trl']:.3f}")
    targets = {"time_ratio": 0.33, "rss_ratio": 0.7} if args.workload == "s" else {}
    c.report(f"ppo-{args.workload}", "update", header, ours, peer, flops=flops, flops_formula=formula, peak=peak,
             targets=targets, precision=args.precision, extra=extra)


def rlxf_side(spec: dict) -> None:
    """rlxf's real PPO stage (``rlxf.stages.ppo.run``), configured as the CLI would be."""
    from rlxf.cli import keep_freed_memory

    keep_freed_memory()  # as the rlxf command does for its process
    out = c.fresh_side(spec)
    w = spec["workload"]
    from rlxf.config import from_dict
    from rlxf.runs import Run
    from rlxf.stages import ppo

    cfg = from_dict(ppo.Config, {
        "out": str(out), "seed": spec["seed"], "device": spec["device"], "progress": False, "log_every": 1,
        "mixed_precision": c.rlxf_mixed_precision(spec),
        # one extra step: the track hook fires after each rollout, so N + 1 steps bracket N whole steps
        "max_steps": spec["updates"] + 1,
        "model": {"name_or_path": spec["policy"], "dtype": "float32"},
        "rollout": {"prompts": spec["prompts"], "batch_size": w["rollouts"], "max_prompt_length": w["prompt_tokens"],
                    "max_new_tokens": w["answer_tokens"], "temperature": 1.0, "backend": spec["backend"],
                    "suppress_tokens": spec["specials"]},  # TRL bans them through the generation config
        "reward": {"model": spec["reward"], "missing_eos_penalty": None},
        "kl": {"coef": KL_COEF, "estimator": "k1"},
        "batch_size": w["rollouts"] // w["minibatches"], "ppo_epochs": w["epochs"], "lr": LR, "lr_schedule": "linear",
        "track": {"clock": "_common:track_clock"},
    })
    ppo.run(cfg)
    rows = Run(out).metrics()
    stamps = [row["clock"] for row in rows]  # after rollout k; stamps[k+1] - stamps[k] = update k + rollout k+1
    import rlxf

    c.write_result(spec, version=f"rlxf {getattr(rlxf, '__version__', c.versions('rlxf')['rlxf'])}",
                   step_seconds=[b - a for a, b in zip(stamps[1:], stamps[2:])],
                   answer_tokens=[row["response_length"] for row in rows], versions=c.versions("torch", "transformers"),
                   **c.gpu_peak(spec))


def trl_side(spec: dict) -> None:
    """TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` on the same models, prompts and settings."""
    import torch

    out = c.fresh_side(spec)
    w = spec["workload"]
    rollouts = w["rollouts"]
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    ids = [tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][-w["prompt_tokens"]:]
           for row in c.read_jsonl(spec["prompts"])]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        **c.trl_args(spec, out), logging_steps=1,
        # the rollouts of one update, split into minibatches, one optimiser step each
        per_device_train_batch_size=rollouts, gradient_accumulation_steps=1, num_mini_batches=w["minibatches"],
        local_rollout_forward_batch_size=rollouts, total_episodes=rollouts * spec["updates"],
        num_ppo_epochs=w["epochs"], response_length=w["answer_tokens"], temperature=1.0, stop_token=None,
        missing_eos_penalty=None, kl_coef=KL_COEF, kl_estimator="k1", learning_rate=LR, lr_scheduler_type="linear",
        num_sample_generations=0)
    clock = c.trl_step_clock()
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32),
        reward_model=AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1),
        train_dataset=dataset, eval_dataset=dataset.select(range(rollouts)), callbacks=[clock])
    trainer.train()
    eos = [row["val/num_eos_tokens"] for row in trainer.state.log_history if "val/num_eos_tokens" in row]
    c.write_result(spec, version=f"trl {c.versions('trl')['trl']}",
                   step_seconds=[b - a for a, b in zip(clock.ends, clock.ends[1:])],
                   answer_tokens=[w["answer_tokens"] if n == 0 else f"{n} EOS" for n in eos],
                   versions=c.versions("torch", "transformers"), **c.gpu_peak(spec))


if __name__ == "__main__":
    main()
