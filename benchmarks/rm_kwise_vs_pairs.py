"""K-wise grouping vs independent pairs, and reward-model accuracy against gold, on Tinyworld.

InstructGPT (§3.5) trains its reward model on all C(K, 2) comparisons of a prompt as ONE
batch element, because "if each of the possible comparisons is treated as a separate
data point, then each completion will potentially undergo K - 1 separate gradient
updates. The model tends to overfit after a single epoch." This script checks that
claim on Tinyworld with the same labels used both ways:

1. write Tinyworld's data; fine-tune the shipped base model on the demonstrations (SFT);
2. sample K answers per prompt from a policy, ranked by simulated labellers
   (``rlxf tinyworld preferences``). The default policy is the base model, whose answers
   mix good, wrong, rude and rambling ones (InstructGPT's first comparisons also came
   from pre-SFT models); ``--policy sft`` samples the SFT model, whose answers are
   mostly good and differ in facts only (harder; see docs/reward.md);
3. train two reward models from the SFT model, same learning rate, same comparisons
   per optimiser step, constant learning rate (so epoch e of a long run is an e-epoch run):
   ``kwise`` on the rankings, ``pairs`` on the same rankings flattened and shuffled;
4. after every epoch, score every train and held-out answer and report pairwise
   accuracy against the labels (noisy) and against the gold oracle's order.

    python benchmarks/rm_kwise_vs_pairs.py --out /tmp/rm-bench --epochs 4

Results go to OUT/results-POLICY.json and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="base model (default: the one rlxf ships)")
    parser.add_argument("--out", default="runs/rm-kwise-vs-pairs")
    parser.add_argument("--policy", choices=("base", "sft"), default="base", help="who writes the answers")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--k", type=int, default=4, help="answers ranked per prompt")
    parser.add_argument("--n-train", type=int, default=1000, help="train prompts")
    parser.add_argument("--n-heldout", type=int, default=200, help="held-out prompts")
    parser.add_argument("--rankings-per-step", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rlxf.config import from_dict
    from rlxf.progress import setup_logging
    from rlxf.stages import reward, sft
    from rlxf.tinyworld import build, preferences

    setup_logging()
    out = Path(args.out)
    build.write_data(from_dict(build.Config, {"out": str(out / "tinyworld"), "seed": args.seed}), out / "tinyworld")
    files = build.paths(out / "tinyworld")
    base = args.base or str(build.SHIPPED)
    policy = sft.run(from_dict(sft.Config, {
        "out": str(out / "sft"), "seed": args.seed, "lr": 1e-3, "warmup_steps": 20, "batch_size": 16,
        "max_steps": args.sft_steps, "log_every": 25, "eval_every": args.sft_steps, "progress": False,
        "model": {"name_or_path": base},
        "data": {"train": str(files["sft_train"]), "eval": str(files["sft_eval"]), "max_length": 128}}))["final"]
    prefs_dir = out / f"prefs-{args.policy}"
    prefs = preferences.run(from_dict(preferences.Config, {
        "policy": policy if args.policy == "sft" else base, "out": str(prefs_dir),
        "n_train": args.n_train, "n_heldout": args.n_heldout,
        "k": args.k, "seed": args.seed, "progress": False}))
    n_rankings = prefs["train"]["rankings"]
    n_pairs = prefs["train"]["pairs"]
    pairs_per_ranking = n_pairs / n_rankings
    steps_per_epoch = -(-n_rankings // args.rankings_per_step)
    results = {"preferences": prefs, "runs": {}}
    for mode, train_file, eval_file, batch in (
            ("kwise", "rankings_train", "rankings_heldout", args.rankings_per_step),
            ("pairs", "pairs_train", "pairs_heldout", round(args.rankings_per_step * pairs_per_ranking))):
        steps = steps_per_epoch * args.epochs
        summary = reward.run(from_dict(reward.Config, {
            "out": str(out / f"rm-{args.policy}-{mode}"), "seed": args.seed, "lr": args.lr, "lr_schedule": "constant",
            "warmup_steps": 10, "batch_size": batch, "max_steps": steps, "log_every": 25,
            "eval_every": steps_per_epoch, "save_every": steps_per_epoch, "keep_checkpoints": args.epochs,
            "progress": False, "model": {"name_or_path": policy},
            "data": {"train": str(prefs_dir / f"{train_file}.jsonl"),
                     "eval": str(prefs_dir / f"{eval_file}.jsonl"), "max_length": 128,
                     "loss": "kwise" if mode == "kwise" else "bradley_terry"}}))
        per_epoch = []
        for epoch in range(1, args.epochs + 1):
            ckpt = out / f"rm-{args.policy}-{mode}" / "checkpoints" / f"step-{epoch * steps_per_epoch:06d}"
            model = _model_at(policy, ckpt)
            per_epoch.append({"epoch": epoch, "steps": epoch * steps_per_epoch,
                              "train": _accuracies(model, policy, prefs_dir / "rankings_train.jsonl"),
                              "heldout": _accuracies(model, policy, prefs_dir / "rankings_heldout.jsonl")})
            print(mode, json.dumps(per_epoch[-1]), flush=True)
        results["runs"][mode] = {"batch_size": batch, "steps_per_epoch": steps_per_epoch,
                                 "sequences_per_step": batch * (args.k if mode == "kwise" else 2),
                                 "summary": summary, "per_epoch": per_epoch}
    (out / f"results-{args.policy}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))


def _model_at(policy: str, ckpt: Path):
    """The reward model as it was at checkpoint ``ckpt`` (a full fine-tune: every weight is in it)."""
    from safetensors.torch import load_file

    from rlxf.models.loading import ModelConfig
    from rlxf.models.reward import init_reward_model

    model = init_reward_model(ModelConfig(name_or_path=policy))
    weights = {k.removeprefix("0."): v for k, v in load_file(str(ckpt / "trainable.safetensors")).items()}
    assert set(weights) == {n for n, _ in model.named_parameters()}, "expected a full fine-tune checkpoint"
    model.load_state_dict(weights, strict=False)
    return model.eval()


def _accuracies(model, policy: str, rankings_file: Path) -> dict[str, float]:
    """Pairwise accuracy against the labels and against gold (gold ties left out), over all pairs."""
    from rlxf.models.loading import load_tokenizer
    from rlxf.models.reward import score_texts

    tokenizer = load_tokenizer(policy)
    rows = [json.loads(line) for line in rankings_file.read_text().splitlines()]
    prompts = [r["prompt"] for r in rows for _ in r["completions"]]
    answers = [a for r in rows for a in r["completions"]]
    flat = score_texts(model, tokenizer, prompts, answers, batch_size=128, max_length=128)
    labels = gold = gold_pairs = n_pairs = 0
    start = 0
    for r in rows:
        rewards = flat[start:start + len(r["completions"])]
        start += len(r["completions"])
        for better, worse in combinations(r["ranking"], 2):
            n_pairs += 1
            labels += (rewards[better] > rewards[worse]) + 0.5 * (rewards[better] == rewards[worse])
        for i, j in combinations(range(len(rewards)), 2):
            if r["gold"][i] != r["gold"][j]:
                gold_pairs += 1
                gold += (rewards[i] - rewards[j]) * (r["gold"][i] - r["gold"][j]) > 0
    return {"vs_labels": labels / n_pairs, "vs_gold": gold / gold_pairs}


def _table(results: dict) -> str:
    lines = ["| grouping | epoch | steps | train acc (labels) | held-out acc (labels) | held-out acc (gold) |",
             "|---|---|---|---|---|---|"]
    for mode, run in results["runs"].items():
        for e in run["per_epoch"]:
            lines.append(f"| {mode} | {e['epoch']} | {e['steps']} | {e['train']['vs_labels']:.3f} | "
                         f"{e['heldout']['vs_labels']:.3f} | {e['heldout']['vs_gold']:.3f} |")
    prefs = results["preferences"]["heldout"]
    lines.append(f"\nheld-out labels agree with gold on {prefs['labels_vs_gold']:.3f} of pairs; "
                 f"two labellers would agree on {prefs['inter_labeller_expected']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
