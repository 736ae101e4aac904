"""RLAIF vs RLHF on Tinyworld: the same pipeline on AI labels and on simulated human labels.

    python benchmarks/rlaif_vs_human_tinyworld.py --sft runs/demo/sft/final --judge runs/tw-judge/sft/final \
        --out runs/rlaif-vs-human

The RLAIF paper's main comparison (Lee et al. 2023, §4.1) on Tinyworld:

1. Answer pairs: K = 4 answers per train prompt, sampled from the base and the SFT
   model (``rlxf tinyworld preferences``), every C(K, 2) pair of them.
2. Two label sets for the *same* pairs: the simulated human labellers' hard choices,
   and the Tinyworld judge's swap-averaged soft labels (``rlxf label``).
3. For each: a reward model (same steps, batch and learning rate; Bradley-Terry on the
   human labels, soft-label cross-entropy on the AI labels), then PPO from the same SFT
   model (``rlxf pipeline`` with the demo's settings).
4. Gold-oracle scores of SFT and both PPO policies on the same held-out prompts, gold
   win rates of each over SFT and head to head (ties half), and each reward model's
   agreement with the gold order on held-out pairs.

``--sft`` is a Tinyworld SFT model (``rlxf demo`` leaves one in ``runs/demo/sft/final``);
``--judge`` the Tinyworld judge (``rlxf tinyworld judge out=runs/tw-judge`` builds it in
10-20 minutes on two cores: ``runs/tw-judge/sft/final``). Prints a table and writes
``OUT/summary.json``; a finished stage is not run again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rlaif-vs-human")
    parser.add_argument("--sft", required=True, help="a Tinyworld SFT model, e.g. runs/demo/sft/final")
    parser.add_argument("--judge", required=True, help="a Tinyworld judge, e.g. runs/tw-judge/sft/final")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--n-train", type=int, default=3000, help="train prompts to sample answers for")
    parser.add_argument("--n-heldout", type=int, default=300, help="held-out prompts (reward-model check)")
    parser.add_argument("--rm-epochs", type=float, default=2.0)
    parser.add_argument("--ppo-steps", type=int, default=40)
    parser.add_argument("--eval-n", type=int, default=200, help="held-out prompts for the gold evaluation")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlxf.progress import setup_logging

    setup_logging()
    summary = run(args)
    print(json.dumps(summary, indent=2, default=float))


def run(args) -> dict:
    from rlxf import pipeline
    from rlxf.config import from_dict
    from rlxf.data.formats import load_prompts
    from rlxf.feedback.ai import label
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld import build, demo, preferences
    from rlxf.tinyworld.evaluate import gold_eval, reward_gold_accuracy, win_rate

    out = Path(args.out)
    world = from_dict(build.Config, {"out": str(out / "tinyworld"), "seed": args.seed})
    build.write_data(world, Path(world.out))
    files = build.paths(world.out, base=build.SHIPPED)
    size = {k: v[0] for k, v in demo.PROFILE.items()} | {"ppo_steps": args.ppo_steps, "eval_n": args.eval_n}
    settings = demo.pipeline_settings(files, size, args.seed, 0.05, False, str(out))

    sft = args.sft
    prefs = preferences.run(from_dict(preferences.Config, {
        "policy": [str(files["base"]), sft], "out": str(out / "preferences"), "seed": args.seed,
        "n_train": args.n_train, "n_heldout": args.n_heldout, "k": 4, "max_new_tokens": 32, "progress": False}))
    pairs, heldout = prefs["files"]["pairs_train"], prefs["files"]["pairs_heldout"]
    ai = label.run(from_dict(label.Config, {
        "out": str(out / "ai-labels"), "data": pairs, "template": "tinyworld", "seed": args.seed,
        "judge": {"model": args.judge, "batch_size": 64}, "chunk_size": 512, "progress": False}))

    n_pairs = prefs["train"]["pairs"]
    rm_steps = max(1, round(args.rm_epochs * n_pairs / 32))
    results, models = {}, {"sft": sft}
    for name, train in (("human", pairs), ("ai", str(out / "ai-labels" / "preferences.jsonl"))):
        result = pipeline.run_stages(from_dict(pipeline.Config, settings | {
            "out": str(out / name), "sft_model": sft, "preferences": train, "labeller": "none",
            "reward_model_train_steps": rm_steps,
            "reward": {"lr": 3e-4, "warmup_steps": 20, "batch_size": 32, "log_every": 50,
                       "eval_every": rm_steps, "save_every": max(1, rm_steps // 4),
                       "data": {"eval": prefs["files"]["pairs_heldout"]}},
        }))
        models[f"ppo_{name}"] = result["summary"]["models"]["ppo"]
        results[name] = {
            "reward_model_vs_gold": reward_gold_accuracy(result["summary"]["models"]["reward"], heldout,
                                                         by_task=True),
            "reward_model_vs_human_labels": result["stages"]["reward"]["heldout"]["accuracy"],
            "kl_final": result["summary"]["kl"]["final"],
        }

    prompts = list(load_prompts(files["prompts_heldout"]))[:args.eval_n]
    reports = {}
    for name, path in models.items():
        model = load_causal_lm(ModelConfig(name_or_path=path))
        reports[name] = gold_eval(model, load_tokenizer(path), prompts, seed=args.seed + 23, max_new_tokens=32)
    totals = {name: r.totals() for name, r in reports.items()}
    summary = {
        "labels": {"ai_vs_gold": _label_gold_agreement(out / "ai-labels" / "preferences.jsonl", pairs),
                   "human_vs_gold": prefs["train"]["labels_vs_gold"],
                   "ai_label_summary": {k: ai.get(k) for k in ("pairs", "labelled", "unparseable_pairs",
                                                               "flip_rate", "mean_prob_first_position")}},
        "runs": results,
        "gold": {name: r.means() for name, r in reports.items()},
        "win_rate": {"rlhf_vs_sft": win_rate(totals["ppo_human"], totals["sft"]),
                     "rlaif_vs_sft": win_rate(totals["ppo_ai"], totals["sft"]),
                     "rlaif_vs_rlhf": win_rate(totals["ppo_ai"], totals["ppo_human"])},
        "eval_prompts": len(prompts), "reward_model_steps": rm_steps, "train_pairs": n_pairs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    _print_table(summary)
    return summary


def _label_gold_agreement(ai_file: Path, pairs_file: str) -> float | None:
    """Share of pairs (gold ties left out) where the judge's favourite is gold's favourite."""
    gold = {}
    for line in open(pairs_file):
        row = json.loads(line)
        gold[(row["prompt"], row["chosen"])] = row["gold_chosen"]
        gold[(row["prompt"], row["rejected"])] = row["gold_rejected"]
    right = []
    for line in open(ai_file):
        row = json.loads(line)
        a, b = gold[(row["prompt"], row["chosen"])], gold[(row["prompt"], row["rejected"])]
        if a != b:
            p = row["prob_chosen"]
            right.append(0.5 if p == 0.5 else float(a > b))
    return sum(right) / len(right) if right else None


def _print_table(summary: dict) -> None:
    gold, runs, win = summary["gold"], summary["runs"], summary["win_rate"]
    print(f"\n{'policy':12s} {'gold':>6s} {'helpful':>8s} {'honest':>7s} {'harmless':>9s} {'fluent':>7s}")
    for name, subs in gold.items():
        print(f"{name:12s} {subs['total']:6.3f} {subs['helpful']:8.3f} {subs['honest']:7.3f} "
              f"{subs['harmless']:9.3f} {subs['fluent']:7.3f}")
    for name in ("human", "ai"):
        r = runs[name]
        print(f"{name:6s} labels: RM vs gold order {r['reward_model_vs_gold']['accuracy']:.3f}, "
              f"RM vs held-out human labels {r['reward_model_vs_human_labels']:.3f}, KL {r['kl_final']:.2f}")
    print(f"gold win rates (ties half, {summary['eval_prompts']} prompts): RLHF over SFT {win['rlhf_vs_sft']:.1%}, "
          f"RLAIF over SFT {win['rlaif_vs_sft']:.1%}, RLAIF over RLHF {win['rlaif_vs_rlhf']:.1%}")


if __name__ == "__main__":
    main()
