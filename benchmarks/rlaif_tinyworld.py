"""RLAIF on Tinyworld: build the Tinyworld judge and measure it (the numbers in docs/rlaif.md).

    python benchmarks/rlaif_tinyworld.py [--base tinyworld/base] --out runs/tw-judge [--seed 0] [--threads 1]

Without ``--base`` the judge starts from the shipped Tinyworld base model, as the demo
does. Prints the judge's summary.json: agreement with the gold oracle with and without
swap-averaging, order-flip rate and favoured position, chain-of-thought, direct
scoring, judge vs simulated humans, and the untuned base model as a chance-level
baseline.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="a built Tinyworld base model folder (default: the shipped one)")
    parser.add_argument("--out", default="runs/tinyworld-judge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlxf.config import from_dict
    from rlxf.progress import setup_logging
    from rlxf.tinyworld import judge

    setup_logging()
    raw = {"out": args.out, "base": args.base, "seed": args.seed, "progress": False}
    if args.steps:
        raw["steps"] = args.steps
    print(json.dumps(judge.run(from_dict(judge.Config, raw)), indent=2))


if __name__ == "__main__":
    main()
