"""PPO-S (issue #7): seconds per PPO update and peak memory, rlxf against TRL 1.12's PPOTrainer.

The workload, identical on both sides: a randomly initialised GPT-2 (4 layers, hidden
256, 4 heads, vocabulary 2048) as policy and reference, a reward model of the same
shape that also initialises the value function; prompts of 24 tokens, answers of
exactly 32 tokens (sampling cannot emit EOS; see _common.build_models), 16 rollouts
per update, 4 PPO epochs over 2 minibatches of 8, k1 KL penalty with β = 0.05,
temperature 1, fp32 (or both bf16 with --precision bf16), the same thread count. TRL 1.12.0 is the last release with PPO
(``trl.experimental.ppo``); it runs from its own virtualenv, benchmarks/.peers/trl-1.12.0.

    python benchmarks/ppo_s.py                           # 2 rounds × 4 updates per side
    python benchmarks/ppo_s.py --rounds 3 --updates 12   # longer
    python benchmarks/ppo_s.py --backend hf              # rlxf sampling with HF generate

rlxf samples with its own loop (``rollout.backend=rlxf``) unless ``--backend hf``.

Per update time is the gap between two consecutive training-loop timestamps: rlxf's
``track`` hook (logged to metrics.jsonl once per step, after the rollout), TRL's
``on_step_end`` callback. The first update of every process is excluded (rlxf runs one
extra step so that both sides yield ``updates - 1`` whole steps per process).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PEER = ("trl-1.12.0", ["trl==1.12.0"])
PROMPT_TOKENS, ANSWER_TOKENS, ROLLOUTS, EPOCHS, MINIBATCHES, KL_COEF, LR = 24, 32, 16, 4, 2, 0.05, 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rlxf/TRL process pairs, alternating which goes first")
    parser.add_argument("--updates", type=int, default=4, help="PPO updates per process (the first is not timed)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads, both sides")
    parser.add_argument("--work", default="runs/bench-ppo-s", help="models, data and run directories")
    parser.add_argument("--seed", type=int, default=0)
    c.add_precision_argument(parser)
    parser.add_argument("--backend", choices=("rlxf", "hf"), default="rlxf",
                        help="rlxf's rollout.backend: its own sampling loop (default) or Hugging Face generate")
    parser.add_argument("--child", choices=("rlxf", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        return {"rlxf": rlxf_side, "trl": trl_side}[args.child](spec)
    if args.updates < 2:
        parser.error("--updates must be ≥ 2: the first update of every process is not timed")

    work = (c.REPO / args.work).resolve()
    peer_python = c.peer_python(*PEER)
    shape = c.Shape()
    paths = c.build_models(work / "models", shape, args.seed, reward=True)
    rng = random.Random(args.seed)
    prompts = c.write_jsonl(work / "prompts.jsonl", [{"prompt": c.random_words(rng, PROMPT_TOKENS, shape)}
                                                     for _ in range(ROLLOUTS * (args.updates + 1))])
    spec = {**paths, "prompts": prompts, "updates": args.updates, "seed": args.seed, "precision": args.precision,
            "backend": args.backend}
    peak = c.matmul_peak_flops(args.threads, args.precision)
    print(f"PPO-S: {args.rounds} rounds × {args.updates} updates per side, {args.precision}; {c.load_average()}",
          flush=True)
    runs = c.alternate(args.rounds, {
        "rlxf": lambda: c.run_side(sys.executable, __file__, "rlxf", spec, work / "rlxf", args.threads),
        "trl": lambda: c.run_side(peer_python, __file__, "trl", spec, work / "trl", args.threads),
    })
    peak = max(peak, c.matmul_peak_flops(args.threads, args.precision))

    n_lm, n_rm = shape.matmul_params(lm_head=True), shape.matmul_params(lm_head=False)
    tokens = ROLLOUTS * (PROMPT_TOKENS + ANSWER_TOKENS)
    # rollout: generation (≈ one forward per token), reference, reward and value forwards;
    # update: EPOCHS passes of forward + backward through policy and value
    flops = tokens * (2 * n_lm + 2 * n_lm + 2 * n_rm + 2 * n_rm + EPOCHS * 6 * (n_lm + n_rm))
    formula = (f"B·T·(4·N_lm + 4·N_rm + {EPOCHS}·6·(N_lm + N_rm)), B·T = {ROLLOUTS}·({PROMPT_TOKENS}+"
               f"{ANSWER_TOKENS}), N_lm = 12·L·d² + V·d = {n_lm:,}, N_rm = 12·L·d² + d = {n_rm:,} "
               "(generation, reference, reward, value forwards at 2·N per token; 6·N per token trained)")
    ours = c.summarize("rlxf", runs["rlxf"][0]["version"], runs["rlxf"],
                       [s for r in runs["rlxf"] for s in r["step_seconds"]], flops, peak)
    peer = c.summarize("TRL", runs["trl"][0]["version"], runs["trl"],
                       [s for r in runs["trl"] for s in r["step_seconds"]], flops, peak)
    c.report("ppo-s", "update", [
        f"PPO-S: GPT-2 {shape.layers}×{shape.hidden}, {shape.heads} heads, V={shape.vocab}, random init; "
        f"{ROLLOUTS} rollouts × ({PROMPT_TOKENS} prompt + {ANSWER_TOKENS} answer tokens) per update; "
        f"{EPOCHS} PPO epochs × {MINIBATCHES} minibatches; k1 KL β={KL_COEF}; {c.precision_words(args.precision)}; "
        f"{args.threads} threads; rlxf samples with rollout.backend={args.backend}",
        f"seconds per PPO update (rollout + {EPOCHS} epochs), first update of each process excluded; "
        "peak RSS = median over processes of each one's own peak"],
        ours, peer, flops=flops, flops_formula=formula, peak=peak, targets={"time_ratio": 0.33, "rss_ratio": 0.7},
        precision=args.precision,
        extra={"answer_tokens": {"rlxf": runs["rlxf"][0]["answer_tokens"], "peer": runs["trl"][0]["answer_tokens"]},
               "threads": args.threads, "rounds": args.rounds, "updates_per_process": args.updates,
               "rlxf_backend": args.backend})


def rlxf_side(spec: dict) -> None:
    """rlxf's real PPO stage (``rlxf.stages.ppo.run``), configured as the CLI would be."""
    out = c.fresh_side(spec)
    from rlxf.config import from_dict
    from rlxf.runs import Run
    from rlxf.stages import ppo

    cfg = from_dict(ppo.Config, {
        "out": str(out), "seed": spec["seed"], "device": "cpu", "progress": False, "log_every": 1,
        "mixed_precision": c.rlxf_mixed_precision(spec),
        # one extra step: the track hook fires after each rollout, so N + 1 steps bracket N whole steps
        "max_steps": spec["updates"] + 1,
        "model": {"name_or_path": spec["policy"], "dtype": "float32"},
        "rollout": {"prompts": spec["prompts"], "batch_size": ROLLOUTS, "max_prompt_length": PROMPT_TOKENS,
                    "max_new_tokens": ANSWER_TOKENS, "temperature": 1.0, "backend": spec.get("backend", "rlxf"),
                    "suppress_tokens": spec["specials"]},  # TRL bans them through the generation config
        "reward": {"model": spec["reward"], "missing_eos_penalty": None},
        "kl": {"coef": KL_COEF, "estimator": "k1"},
        "batch_size": ROLLOUTS // MINIBATCHES, "ppo_epochs": EPOCHS, "lr": LR, "lr_schedule": "linear",
        "track": {"clock": "_common:track_clock"},
    })
    ppo.run(cfg)
    rows = Run(out).metrics()
    stamps = [row["clock"] for row in rows]  # after rollout k; stamps[k+1] - stamps[k] = update k + rollout k+1
    import rlxf

    c.write_result(spec, version=f"rlxf {getattr(rlxf, '__version__', c.versions('rlxf')['rlxf'])}",
                   step_seconds=[b - a for a, b in zip(stamps[1:], stamps[2:])],
                   answer_tokens=[row["response_length"] for row in rows], versions=c.versions("torch", "transformers"))


def trl_side(spec: dict) -> None:
    """TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` on the same models, prompts and settings."""
    import torch

    out = c.fresh_side(spec)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    ids = [tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][-PROMPT_TOKENS:]
           for row in c.read_jsonl(spec["prompts"])]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        **c.trl_args(spec, out), logging_steps=1,
        # 16 rollouts per update, split into 2 minibatches of 8, one optimiser step each
        per_device_train_batch_size=ROLLOUTS, gradient_accumulation_steps=1, num_mini_batches=MINIBATCHES,
        local_rollout_forward_batch_size=ROLLOUTS, total_episodes=ROLLOUTS * spec["updates"],
        num_ppo_epochs=EPOCHS, response_length=ANSWER_TOKENS, temperature=1.0, stop_token=None,
        missing_eos_penalty=None, kl_coef=KL_COEF, kl_estimator="k1", learning_rate=LR, lr_scheduler_type="linear",
        num_sample_generations=0)
    clock = c.trl_step_clock()
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32),
        reward_model=AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1),
        train_dataset=dataset, eval_dataset=dataset.select(range(ROLLOUTS)), callbacks=[clock])
    trainer.train()
    eos = [row["val/num_eos_tokens"] for row in trainer.state.log_history if "val/num_eos_tokens" in row]
    c.write_result(spec, version=f"trl {c.versions('trl')['trl']}",
                   step_seconds=[b - a for a, b in zip(clock.ends, clock.ends[1:])],
                   answer_tokens=[ANSWER_TOKENS if n == 0 else f"{n} EOS" for n in eos],
                   versions=c.versions("torch", "transformers"))


if __name__ == "__main__":
    main()
