"""PPO over an SFT model that learnt from careless demonstrators (docs/ppo.md §4).

    python benchmarks/ppo_tinyworld_careless.py --demo runs/demo --out runs/careless --shares 0.3 0.6
    python benchmarks/ppo_tinyworld_careless.py --demo runs/demo --out runs/terse --flaws terse \
        --shares 0.5 0.65 0.8 --long-steps 100

``--demo`` is a finished ``rlxf demo``. For each share, that share of its demonstrations is
replaced by a flawed answer to the same prompt, as careless contractors might write one
(a wrong value or a false remark half the time, an answer to another question or rambling
a quarter each; Tinyworld's own corpus generator writes them), or with ``--flaws terse``
by a true answer that does less than it could, as hurried ones might
(``rlxf.tinyworld.corpus.terse_answer``: "red ." for "the fox is red ."). The demo's whole pipeline
then runs on those demonstrations with the demo's own config: SFT, preferences over
answers of the base and that SFT model, reward model from it, PPO (40 steps), and PPO again for
``--long-steps`` steps from the same SFT and reward models. Every policy is scored as the
demo scores its own (one sampled answer to each of the first 200 held-out prompts,
sampling seed 23, ties half), with the ceiling no policy can pass
(``rlxf.tinyworld.evaluate.win_rate_ceiling``).

The demo's SFT model writes a best answer to most held-out prompts, which caps any win
rate over it well below 70%; demonstrations with flaws leave room that comparisons can
show and demonstrations cannot (InstructGPT's argument for RLHF). Results:
OUT/results.json and OUT/results.md; finished runs are reused.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from ppo_tinyworld_bounds import demo_data, start_study, study_parser, win_rates  # as the bounds are

FLAWS = ("wrong", "wrong", "offtopic", "rambling")  # drawn uniformly: a wrong answer half the time


def main() -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.3, 0.6],
                        help="shares of the demonstrations replaced by flawed answers")
    parser.add_argument("--flaws", choices=("careless", "terse"), default="careless",
                        help="careless: wrong, off-topic or rambling answers; terse: true but less helpful ones")
    parser.add_argument("--long-steps", type=int, default=150, help="steps of the longer PPO run")
    args, demo, out = start_study(parser)
    results = {"command": " ".join(["python"] + sys.argv), "flaws": args.flaws, "shares": {}}
    for share in args.shares:
        results["shares"][str(share)] = careless_pipeline(demo, out / f"share-{share}", share, args.long_steps,
                                                          args.eval_n, args.flaws)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


def careless_demonstrations(src: Path, dst: Path, share: float, flaws: str = "careless") -> int:
    """``src``'s demonstrations with ``share`` of the answers replaced by flawed ones; how many were."""
    from rlxf.tinyworld.corpus import answer_of, terse_answer

    rng = random.Random(f"{flaws}/{share}")
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    flawed = 0
    for row in rows:
        if rng.random() < share:
            row["completion"] = (terse_answer(row["prompt"], rng) if flaws == "terse"
                                 else answer_of(row["prompt"], rng.choice(FLAWS), rng))
            flawed += 1
    dst.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return flawed


def careless_pipeline(demo: Path, out: Path, share: float, long_steps: int, eval_n: int,
                      flaws: str = "careless") -> dict:
    from rlxf import pipeline
    from rlxf.config import load_config
    from rlxf.stages import ppo
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    out.mkdir(parents=True, exist_ok=True)
    demos = out / "sft_train.jsonl"
    flawed = careless_demonstrations(demo_data(demo, "demonstrations"), demos, share, flaws)
    run = pipeline.run_stages(load_config(pipeline.Config, demo / "pipeline.yaml", [
        f"out={out / 'pipeline'}", f"demonstrations={demos}",
        "reward.tinyworld.policy=[run:base,run:sft]",  # as the demo: the base and this run's SFT model
        "progress=false"]))
    models = run["summary"]["models"]
    long = ppo.run(load_config(ppo.Config, out / "pipeline" / "ppo" / "config.yaml", [
        f"out={out / f'ppo-{long_steps}'}", f"max_steps={long_steps}", f"eval_every={max(1, long_steps // 6)}",
        f"save_every={max(1, long_steps // 6)}", "progress=false"]))["final"]
    prefs = run["stages"]["preferences"]["files"]["pairs_heldout"]
    return {"flawed_demonstrations": flawed,
            "rm_gold_accuracy": reward_gold_accuracy(models["reward"], prefs, by_aspect=True),
            "eval": win_rates(demo, models["sft"], {"ppo-40": models["ppo"], f"ppo-{long_steps}": long}, eval_n)}


def markdown(results: dict) -> str:
    kind = "terse" if results.get("flaws") == "terse" else "flawed"
    lines = [f"| {kind} demonstrations | RM vs gold (honesty-dominated pairs) | SFT gold (ceiling) | policy "
             "| win rate over SFT | gold | helpful | honest |",
             "|---|---|---|---|---|---|---|---|"]
    for share, res in results["shares"].items():
        ev, rm = res["eval"], res["rm_gold_accuracy"]
        sft = ev["sft"]
        head = (f"| {float(share):.0%} ({res['flawed_demonstrations']}) | {rm['accuracy']:.3f} "
                f"({rm['by_aspect'].get('honest', {}).get('accuracy', float('nan')):.2f}) "
                f"| {sft['gold']['total']:.3f} ({sft['win_rate_ceiling']:.1%}) ")
        for name, run in ev.items():
            if name == "sft":
                continue
            g = run["gold"]
            lines.append(f"{head}| {name} | {run['win_rate_over_sft']:.1%} | {g['total']:.3f} | {g['helpful']:.3f} "
                         f"| {g['honest']:.3f} |")
            head = "| | | "
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
