"""How accurate must the reward be for PPO to reach 70% over SFT on Tinyworld? (docs/ppo.md §4)

    rlxf demo terse_share=0.5 out=runs/demo-terse
    python benchmarks/ppo_tinyworld_reward_accuracy.py --demo runs/demo-terse --out runs/ppo-reward-accuracy

``--demo`` is a finished ``rlxf demo``; the terse one leaves PPO room (its SFT model writes
a best answer to about a fifth of the held-out prompts fewer than the default demo's).
Every PPO run is the demo's own PPO config with ``reward.function`` swapped, started from
the demo's SFT model with the value function from the demo's reward model, and scored as
the demo scores its own policy (the first 200 held-out prompts, sampling seed 23, gold win
rate over SFT, ties half):

- ``gold``: the gold oracle's total × 10 (unscaled, its answers differ by hundredths
  and the KL penalty outweighs it), 40 and 120 steps;
- ``noise-1``, ``noise-2``: the same plus N(0, σ²) noise per (prompt, answer), fixed by a
  hash of the two, so that its order of the held-out pairs is as far from gold's as a
  learned reward model's (σ = 2: about 0.745, the terse demo's own model 0.743);
- ``demo``: the demo's own PPO policy (its learned reward model, 40 steps).

Each reward's agreement with gold on the demo's held-out pairs is measured too. Results:
OUT/results.json and OUT/results.md (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from ppo_tinyworld_bounds import gold_accuracy, start_study, study_parser, train_ppo, win_rates

SCALE = 10.0
MODULE = Path(__file__).stem


def gold_scaled(prompts, answers, ended) -> list[float]:
    """The gold oracle's total × 10: a perfect reward model on the scale of a learned one."""
    from rlxf.tinyworld.evaluate import gold_totals

    return [SCALE * g for g in gold_totals(prompts, answers, ended)]


def _noisy(prompts, answers, ended, sigma: float) -> list[float]:
    return [g + sigma * _normal(p, a) for g, p, a in zip(gold_scaled(prompts, answers, ended), prompts, answers)]


def _normal(prompt, answer) -> float:
    """A standard normal number fixed by ``(prompt, answer)`` (Box-Muller on a hash): the
    same answer always gets the same error, as from a reward model."""
    digest = hashlib.blake2b(f"{prompt}\x00{answer}".encode(), digest_size=16).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2**64  # (0, 1]
    u2 = int.from_bytes(digest[8:], "big") / 2**64
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def gold_noise_1(prompts, answers, ended) -> list[float]:
    return _noisy(prompts, answers, ended, 1.0)


def gold_noise_2(prompts, answers, ended) -> list[float]:
    return _noisy(prompts, answers, ended, 2.0)


def main() -> None:
    args, demo, out = start_study(study_parser(__doc__))
    value = str(demo / "reward" / "final")
    rewards = {"gold": "gold_scaled", "noise-1": "gold_noise_1", "noise-2": "gold_noise_2"}
    runs = {"gold-40": ("gold", 40), "gold-120": ("gold", 120), "noise-1-120": ("noise-1", 120),
            "noise-2-120": ("noise-2", 120)}
    policies = {"demo": str(demo / "ppo" / "final")}
    for name, (reward, steps) in runs.items():
        policies[name] = train_ppo(demo, out / name, {"reward.model": None, "reward.value_model": value,
                                                      "reward.function": f"{MODULE}:{rewards[reward]}",
                                                      "max_steps": steps})
    accuracy = {name: gold_accuracy(f"{MODULE}:{fn}", demo)["accuracy"] for name, fn in rewards.items()}
    accuracy["demo"] = gold_accuracy(value, demo)["accuracy"]
    results = {"command": " ".join(["python"] + sys.argv), "reward_vs_gold": accuracy,
               "eval": win_rates(demo, str(demo / "sft" / "final"), policies, args.eval_n)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results, runs))
    print(markdown(results, runs))


def markdown(results: dict, runs: dict) -> str:
    ev, acc = results["eval"], results["reward_vs_gold"]
    lines = [f"SFT: gold {ev['sft']['gold']['total']:.3f}, ceiling {ev['sft']['win_rate_ceiling']:.1%}", "",
             "| policy | reward (vs gold on held-out pairs) | steps | win rate over SFT | gold | helpful | honest |",
             "|---|---|---|---|---|---|---|"]
    for name, r in ev.items():
        if name == "sft":
            continue
        reward, steps = runs.get(name, ("demo", 40))
        g = r["gold"]
        lines.append(f"| {name} | {reward} ({acc[reward]:.3f}) | {steps} | {r['win_rate_over_sft']:.1%} | "
                     f"{g['total']:.3f} | {g['helpful']:.3f} | {g['honest']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
