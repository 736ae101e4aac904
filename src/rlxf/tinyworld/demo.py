"""The Tinyworld demo: the whole RLHF loop on a laptop CPU, measured by the gold oracle.

    rlxf demo [--quick] [--out DIR]

Writes Tinyworld's data, then runs `rlxf pipeline` on it from the shipped base model:
SFT on demonstrations, simulated labellers ranking SFT samples, a reward model on
their rankings, PPO against it (with the gold score tracked, never optimised), and
evaluation. Because Tinyworld's gold oracle is known, the demo also reports what real
RLHF cannot measure: the gold score of base, SFT and PPO models on held-out prompts,
gold win rates, and how often the reward model orders held-out pairs as gold does.
``OUT/summary.json`` holds the numbers, ``OUT/report.html`` shows them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

from rlxf.config import from_dict
from rlxf.errors import ConfigError
from rlxf.runs import Timer

log = logging.getLogger("rlxf")

GOLD = "rlxf.tinyworld.evaluate:gold_totals"


@dataclass(kw_only=True)
class Config:
    """``rlxf demo``: the whole loop on Tinyworld, measured by the gold oracle."""

    out: str = "runs/demo"
    """Output directory: data, one run directory per stage, summary.json, report.html."""
    seed: int = 0
    """Seed of the data, training order and sampling."""
    quick: bool = False
    """A smaller, faster profile (CI and a first look): fewer steps and prompts."""
    world: str | None = None
    """A directory made by `rlxf tinyworld build`; null uses the shipped base model."""
    terse_share: float = 0.0
    """Share of the demonstrations written tersely (true answers that do less than they could;
    `rlxf tinyworld build`'s key of that name), which leaves PPO room over SFT (docs/ppo.md §4).
    With `world`, the build's own demonstrations are used and this must stay 0."""
    kl_coeff: float = 0.05
    """β of PPO's KL penalty."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """'bf16' runs SFT, reward and PPO with bfloat16 matmuls (float32 weights): faster on
    CPUs with AVX512-BF16/AMX and on recent GPUs; the gold evaluation stays float32.
    'auto': bf16 where the device computes it natively, float32 elsewhere."""
    rollout_backend: Literal["hf", "rlxf"] = "hf"
    """What samples PPO's answers: 'hf' (the policy's generate) or 'rlxf' (rlxf's sampling
    loop: the same distribution, faster)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        if self.world and self.terse_share:
            raise ConfigError("terse_share shapes the data the demo writes itself; with world=DIR the build's "
                              "demonstrations are used: build DIR with `rlxf tinyworld build terse_share=...`")
        if not 0 <= self.terse_share <= 1:
            raise ConfigError(f"terse_share is a share of the demonstrations, in [0, 1]; got {self.terse_share}")


# (full, quick) sizes of each stage
PROFILE = {
    "sft_steps": (400, 150),
    "prefs_train": (1000, 300),
    "prefs_heldout": (200, 100),
    "rm_steps": (400, 150),
    "ppo_steps": (40, 20),
    "eval_n": (200, 100),
}


def run(cfg: Config) -> dict:
    from rlxf import pipeline
    from rlxf.tinyworld import build

    size = {k: v[1] if cfg.quick else v[0] for k, v in PROFILE.items()}
    out = Path(cfg.out).resolve()  # the stages' paths read the same however out is written
    world = None
    if cfg.world:
        files = build.paths(cfg.world)
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise ConfigError(f"world={cfg.world} is not a finished `rlxf tinyworld build` output: it lacks "
                              f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    else:
        world = from_dict(build.Config, {"out": str(out / "tinyworld"), "seed": cfg.seed,
                                         "terse_share": cfg.terse_share})
        files = build.paths(world.out, base=build.SHIPPED)
    # the whole pipeline config is checked before any data is written
    settings = from_dict(pipeline.Config, pipeline_settings(files, size, cfg.seed, cfg.kl_coeff, cfg.progress,
                                                            str(out), cfg.mixed_precision, cfg.rollout_backend))
    timer = Timer()
    if world is not None:
        build.write_data(world, Path(world.out))
    data_seconds = timer.elapsed()

    result = pipeline.run_stages(settings)
    result["summary"]["seconds"] = {"data": data_seconds, **result["summary"]["seconds"]}

    timer = Timer()
    gold = _gold_report(cfg, files, result, size["eval_n"])
    result["summary"]["seconds"]["gold_eval"] = timer.elapsed()
    result["summary"] = {**gold, **result["summary"]}
    from rlxf.evaluate.report import DEMO_TITLE, demo_win_rates

    result["win_rates"] = demo_win_rates(gold)
    pipeline.write_outputs(result, title=DEMO_TITLE)
    _print_table(result["summary"], Path(cfg.out))
    return result["summary"]


def pipeline_settings(files: dict, size: dict, seed: int, kl_coeff: float, progress: bool, out: str,
                      mixed_precision: str = "no", rollout_backend: str = "hf") -> dict:
    """The ``rlxf pipeline`` config of the demo (also used by the Tinyworld benchmarks)."""
    settings = {
        "out": out, "seed": seed, "progress": progress,
        "base_model": str(files["base"]), "demonstrations": str(files["sft_train"]),
        "prompts": str(files["prompts_train"]), "eval_prompts": str(files["prompts_heldout"]),
        "pretrain": str(files["pretrain"]), "pretrain_eval": str(files["pretrain_heldout"]),
        "labeller": "tinyworld", "gold": GOLD, "kl_coeff": kl_coeff, "eval_n": size["eval_n"],
        "sft_train_steps": size["sft_steps"], "reward_model_train_steps": size["rm_steps"],
        "reinforcement_learning_train_steps": size["ppo_steps"],
        "prompt_sequence_length": 96, "target_sequence_length": 32,
        "sft": {"lr": 1e-3, "warmup_steps": 20, "batch_size": 16, "log_every": 10,
                "eval_every": max(1, size["sft_steps"] // 4), "save_every": max(1, size["sft_steps"] // 4),
                "data": {"eval": str(files["sft_eval"])}},
        "reward": {"lr": 3e-4, "warmup_steps": 20, "batch_size": 8, "log_every": 10,
                   "eval_every": max(1, size["rm_steps"] // 4), "save_every": max(1, size["rm_steps"] // 4),
                   # answers from the base and the SFT model, as InstructGPT sampled from several policies
                   "tinyworld": {"n_train": size["prefs_train"], "n_heldout": size["prefs_heldout"], "k": 4,
                                 "policy": ["run:base", "run:sft"]}},
        "ppo": {"lr": 1e-4, "warmup_steps": 1, "batch_size": 16, "log_every": 1,
                "eval_every": max(1, size["ppo_steps"] // 4), "save_every": max(1, size["ppo_steps"] // 6),
                "rollout": {"batch_size": 32, "backend": rollout_backend}},
    }
    for stage in ("sft", "reward", "ppo"):
        settings[stage]["mixed_precision"] = mixed_precision
    return settings


def _gold_report(cfg: Config, files: dict, result: dict, n_prompts: int) -> dict:
    """Gold scores of base, SFT and PPO on the same held-out prompts and sampling seed;
    the reward model's accuracy against gold order; the labellers' agreement."""
    from rlxf.data.formats import load_prompts
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld.evaluate import gold_eval, win_rate, win_rate_ceiling

    prompts = list(load_prompts(files["prompts_heldout"]))[:n_prompts]
    reports = {}
    for name, path in (("base", files["base"]), ("sft", result["summary"]["models"]["sft"]),
                       ("ppo", result["summary"]["models"]["ppo"])):
        model = load_causal_lm(ModelConfig(name_or_path=str(path)))
        reports[name] = gold_eval(model, load_tokenizer(str(path)), prompts, seed=cfg.seed + 23, max_new_tokens=32)
    totals = {name: r.totals() for name, r in reports.items()}
    prefs = result["stages"]["preferences"] or {}
    return {
        "gold": {name: r.mean() for name, r in reports.items()},
        "gold_subscores": {name: r.means() for name, r in reports.items()},
        "win_rate": {"sft_vs_base": win_rate(totals["sft"], totals["base"]),
                     "ppo_vs_sft": win_rate(totals["ppo"], totals["sft"]),
                     "ppo_vs_base": win_rate(totals["ppo"], totals["base"])},
        # the best any policy could do against SFT's answers: ties on those that are already best
        "win_rate_ceiling": {"over_sft": win_rate_ceiling(prompts, totals["sft"])},
        "reward_model_gold": {"heldout_accuracy": _rm_gold_accuracy(result)},
        "labellers": {"agreement": (prefs.get("train") or {}).get("inter_labeller_expected"),
                      "vs_gold": (prefs.get("train") or {}).get("labels_vs_gold")},
        "eval_prompts": len(prompts),
    }


def _rm_gold_accuracy(result: dict) -> float | None:
    """Share of held-out answer pairs (gold ties left out) that the reward model orders as gold does."""
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    prefs = result["stages"]["preferences"]
    if not prefs:
        return None
    measured = reward_gold_accuracy(result["summary"]["models"]["reward"], prefs["files"]["pairs_heldout"])
    return measured and measured["accuracy"]


def _print_table(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = ("total", "helpful", "honest", "harmless", "fluent")
    table = Table(title=f"Tinyworld gold-oracle scores ({summary['eval_prompts']} held-out prompts, sampled)")
    table.add_column("model")
    for key in keys:
        table.add_column(key, justify="right")
    for name, subs in summary["gold_subscores"].items():
        table.add_row(name, *(f"{subs[k]:.3f}" for k in keys))
    console = Console(stderr=True)
    console.print(table)
    w = summary["win_rate"]
    console.print(f"gold win rate (ties half): SFT over base {w['sft_vs_base']:.1%}, "
                  f"PPO over SFT {w['ppo_vs_sft']:.1%} (no policy can exceed "
                  f"{summary['win_rate_ceiling']['over_sft']:.1%}), PPO over base {w['ppo_vs_base']:.1%}")
    rm_gold = summary["reward_model_gold"]["heldout_accuracy"]
    console.print(f"mean KL(PPO ‖ SFT) per answer: {summary['kl']['final']:.2f} nats; reward model vs gold "
                  f"order on held-out pairs: {'n/a' if rm_gold is None else f'{rm_gold:.1%}'}")
    console.print(f"report: {out / 'report.html'}")
