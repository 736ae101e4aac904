"""The fast path against float32 on Tinyworld: the demo's whole loop, twice.

    python benchmarks/bf16_tinyworld.py --out runs/bf16-vs-fp32     # about 3 minutes on 2 cores

Runs ``rlxf demo`` (SFT → preferences → reward model → PPO → gold evaluation) as shipped
(``mixed_precision=no``, PPO sampling with ``generate``) and on the fast path
(``mixed_precision=bf16``, PPO sampling with ``rollout.backend=rlxf``), same seed, same
data, and shows whether learning is unchanged:

- the headline numbers: gold scores of SFT and PPO, gold win rate of PPO over SFT,
  reward-model accuracy against the gold order, final KL, and each stage's seconds.
- each stage on *the same inputs*: after the two demos, a bf16 reward model on the
  float32 demo's preference data, and bf16 PPO from the float32 demo's SFT and reward
  models (in the bf16 demo every stage after SFT also sees different data, because the
  answers it is trained on were sampled from a differently rounded SFT model, so its
  curves differ as two seeds would).
- the learning curves side by side (``OUT/bf16_vs_fp32.png``): SFT train and held-out
  loss (the two demos), reward-model loss and held-out accuracy, PPO reward-model score,
  gold score and KL to the SFT model (float32 demo against bf16 on the same inputs).

The gold evaluation itself always runs in float32. A finished demo is not run again
(delete ``OUT/fp32`` or ``OUT/bf16`` to rerun it). Writes ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CURVES = [  # (stage, metric, title)
    ("sft", "loss", "SFT train loss"),
    ("sft", "eval_loss", "SFT held-out loss"),
    ("reward", "loss", "RM train loss (same data)"),
    ("reward", "eval_accuracy", "RM held-out accuracy vs labels (same data)"),
    ("ppo", "score", "PPO reward-model score (same SFT + RM)"),
    ("ppo", "gold", "PPO gold score of samples (same SFT + RM)"),
    ("ppo", "kl", "PPO KL to SFT (same SFT + RM)"),
]
SIDES = {"fp32": ("no", "hf"), "bf16": ("bf16", "rlxf")}  # (mixed_precision, rollout backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bf16-vs-fp32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from rlxf.progress import setup_logging

    setup_logging()
    out = Path(args.out)
    summaries = {name: _demo(out / name, *side, args.seed) for name, side in SIDES.items()}
    table = {name: _headline(s, out / name) for name, s in summaries.items()}
    table["bf16, same inputs"] = _same_inputs(out)
    _plot(out, out / "bf16_vs_fp32.png")
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"\n{'':<28} {'fp32 demo':>10} {'bf16 demo':>10} {'bf16, same inputs':>18}")
    for key in table["fp32"]:
        same = table["bf16, same inputs"].get(key)
        print(f"{key:<28} {table['fp32'][key]:>10.3f} {table['bf16'][key]:>10.3f} "
              f"{'' if same is None else f'{same:.3f}':>18}")
    print(f"curves: {out / 'bf16_vs_fp32.png'}")


def _demo(out: Path, precision: str, backend: str, seed: int) -> dict:
    from rlxf.config import from_dict
    from rlxf.tinyworld import demo

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    return demo.run(from_dict(demo.Config, {"out": str(out), "seed": seed, "mixed_precision": precision,
                                            "rollout_backend": backend, "progress": False}))


def _same_inputs(out: Path) -> dict[str, float]:
    """The float32 demo's reward and PPO stages rerun in bf16 on the same inputs."""
    from rlxf.config import load_config
    from rlxf.stages import ppo, reward
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    done = {}
    for stage, module in (("reward", reward), ("ppo", ppo)):
        # the float32 run's config: its data, and for PPO its SFT model and reward model
        overrides = [f"out={out / 'bf16-same' / stage}", "mixed_precision=bf16",
                     *(["rollout.backend=rlxf"] if stage == "ppo" else [])]
        done[stage] = module.run(load_config(module.Config, out / "fp32" / stage / "config.yaml", overrides))
    pairs, rm = out / "fp32" / "preferences" / "pairs_heldout.jsonl", out / "bf16-same" / "reward" / "final"
    return {
        "PPO gold, in-run eval": _in_run_gold(out / "bf16-same"),
        "RM accuracy vs gold": reward_gold_accuracy(str(rm), str(pairs))["accuracy"],
        "RM accuracy vs labels": done["reward"]["heldout"]["accuracy"],
        "PPO KL (final)": done["ppo"]["kl.final"],
        "seconds reward": done["reward"]["seconds"], "seconds ppo": done["ppo"]["seconds"],
    }


def _in_run_gold(run: Path) -> float:
    """PPO's last held-out evaluation: mean gold score of answers to 128 held-out prompts."""
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_gold" in r][-1]["eval_gold"]


def _headline(s: dict, run: Path) -> dict[str, float]:
    return {
        "PPO gold, in-run eval": _in_run_gold(run),
        "gold SFT": s["gold"]["sft"], "gold PPO": s["gold"]["ppo"],
        "gold win PPO over SFT": s["win_rate"]["ppo_vs_sft"],
        "RM accuracy vs gold": s["reward_model_gold"]["heldout_accuracy"],
        "RM accuracy vs labels": s["reward_model"]["heldout_label_accuracy"],
        "PPO KL (final)": s["kl"]["final"],
        **{f"seconds {stage}": s["seconds"][stage] for stage in ("sft", "reward", "ppo")},
    }


def _plot(out: Path, png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 6.5))
    FigureCanvasAgg(fig)
    for i, (stage, metric, title) in enumerate(CURVES):
        ax = fig.add_subplot(2, 4, i + 1)
        for name, style in (("fp32", "-"), ("bf16", "--")):
            run = out / (name if stage == "sft" or name == "fp32" else "bf16-same") / stage
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            points = [(r["step"], r[metric]) for r in rows if r.get(metric) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=".", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle("Tinyworld demo: float32 and bf16 mixed precision, same seed")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
