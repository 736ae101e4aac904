"""The Tinyworld demo: build the world, fine-tune, and measure with the gold oracle.

    rlxf demo [--quick] [--out DIR]

Stages run in order and each leaves its own run directory under ``OUT``; a stage
whose directory is complete is skipped, so re-running after a crash continues
where it stopped. ``OUT/summary.json`` holds the headline numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rlxf.config import from_dict
from rlxf.runs import Timer

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class Config:
    """``rlxf demo``: the whole loop on Tinyworld, on a laptop CPU."""

    out: str = "runs/demo"
    """Output directory for every stage, summary.json and the report."""
    seed: int = 0
    """Seed of the world, the data order and the sampling."""
    quick: bool = False
    """A smaller, faster profile (for CI and a first look)."""
    world: str | None = None
    """A directory built by `rlxf tinyworld build`; null uses the shipped base model and writes the data under OUT."""
    eval_prompts: int = 200
    """Held-out prompts scored by the gold oracle."""
    sft_steps: int = 400
    """SFT optimiser steps (batch 16)."""
    progress: bool = True
    """Show progress bars."""


def run(cfg: Config) -> dict:
    from rlxf.tinyworld import build

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    scale = 0.5 if cfg.quick else 1.0

    timer = Timer()
    if cfg.world:  # a world built by `rlxf tinyworld build`
        files = build.paths(cfg.world)
    else:  # the shipped base model, and data written now
        world = from_dict(build.Config, {"out": str(out / "tinyworld"), "seed": cfg.seed})
        build.write_data(world, Path(world.out))
        files = build.paths(world.out, base=build.SHIPPED)
    seconds["data"] = timer.elapsed()

    timer = Timer()
    sft_summary = _sft(cfg, files, out / "sft", steps=int(cfg.sft_steps * scale))
    seconds["sft"] = timer.elapsed()

    timer = Timer()
    gold = _gold(cfg, files, {"base": files["base"], "sft": Path(sft_summary["final"])},
                 n_prompts=int(cfg.eval_prompts * scale))
    seconds["evaluate"] = timer.elapsed()

    summary = {
        "gold": {name: report.mean() for name, report in gold.items()},
        "gold_subscores": {name: report.means() for name, report in gold.items()},
        "win_rate": {"sft_vs_base": _win(gold["sft"], gold["base"])},
        "sft": {"eval_loss": sft_summary["final_eval_loss"]},
        "eval_prompts": len(gold["base"].prompts),
        "seconds": {**seconds, "total": sum(seconds.values())},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_table(summary)
    return summary


def _sft(cfg: Config, files: dict, out: Path, steps: int) -> dict:
    from rlxf.stages import sft

    return sft.run(from_dict(sft.Config, {
        "out": str(out), "seed": cfg.seed, "lr": 1e-3, "warmup_steps": 20, "batch_size": 16,
        "max_steps": steps, "log_every": 20, "eval_every": max(1, steps // 4), "save_every": max(1, steps // 4),
        "progress": cfg.progress,
        "model": {"name_or_path": str(files["base"])},
        "data": {"train": str(files["sft_train"]), "eval": str(files["sft_eval"]), "max_length": 128},
    }))


def _gold(cfg: Config, files: dict, models: dict[str, Path], n_prompts: int) -> dict:
    """Gold-oracle scores of each model on the same held-out prompts and sampling seed."""
    from rlxf.data.formats import load_prompts
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld.evaluate import gold_eval

    prompts = list(load_prompts(files["prompts_heldout"]))[:n_prompts]
    reports = {}
    for name, path in models.items():
        model = load_causal_lm(ModelConfig(name_or_path=str(path)))
        tokenizer = load_tokenizer(str(path))
        reports[name] = gold_eval(model, tokenizer, prompts, seed=cfg.seed, progress=cfg.progress)
        log.info("gold score of %s on %d held-out prompts: %.3f", name, len(prompts), reports[name].mean())
    return reports


def _win(a, b) -> float:
    from rlxf.tinyworld.evaluate import win_rate

    return win_rate(a.totals(), b.totals())


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Tinyworld gold-oracle scores ({summary['eval_prompts']} held-out prompts, sampled)")
    table.add_column("model")
    for key in ("total", "helpful", "honest", "harmless", "fluent"):
        table.add_column(key, justify="right")
    for name, subs in summary["gold_subscores"].items():
        table.add_row(name, *(f"{subs[k]:.3f}" for k in ("total", "helpful", "honest", "harmless", "fluent")))
    console = Console(stderr=True)
    console.print(table)
    console.print(f"win rate of SFT over base (gold, ties half): {summary['win_rate']['sft_vs_base']:.1%}")
