"""The whole RLHF loop in one command: SFT → preferences → reward model → PPO → evaluation.

    rlxf pipeline --config pipeline.yaml [key=value ...]

Each stage writes its own run directory under ``out`` (``sft/``, ``preferences/``,
``reward/``, ``ppo/``, ``eval/``) and a finished stage is not run again, so re-running
the same command after a crash continues where it stopped (PPO from its newest
checkpoint). A stage whose output you already have is skipped by giving it
(``sft_model``, ``preferences``, ``reward_model``). The knobs are those of managed RLHF
services (``kl_coeff``, ``reward_model_train_steps``,
``reinforcement_learning_train_steps``, ``instruction``, learning-rate multipliers,
prompt and target sequence lengths); anything else of a stage is reachable through
``sft.*``, ``reward.*`` and ``ppo.*`` (the stage's own config keys, e.g.
``ppo.rollout.batch_size=32``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from rlxf.config import from_dict, to_dict
from rlxf.errors import ConfigError
from rlxf.runs import Timer

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class Config:
    """``rlxf pipeline``: SFT, preference data, reward model, PPO and evaluation."""

    out: str
    """Output directory: one run directory per stage, summary.json and report.html."""
    base_model: str
    """The model to align: a Hugging Face directory or hub id."""
    prompts: str
    """Prompts for PPO rollouts (and for preference sampling)."""
    eval_prompts: str
    """Held-out prompts for the side-by-side evaluation."""
    demonstrations: str | None = None
    """SFT data; null with sft_model given."""
    preferences: str | None = None
    """Preference data (human or AI labelled) for the reward model; null: labeller makes it."""
    labeller: Literal["none", "tinyworld"] = "none"
    """Who labels SFT samples when preferences is null: 'tinyworld' = the simulated labellers."""
    pretrain: str | None = None
    """Pre-training text for PPO-ptx (used when ppo.ptx.coef > 0)."""
    pretrain_eval: str | None = None
    """Held-out pre-training text whose LM loss PPO tracks (what PPO-ptx should preserve)."""
    sft_model: str | None = None
    """An SFT model to start from instead of running SFT."""
    reward_model: str | None = None
    """A trained reward model to use instead of training one."""
    instruction: str | None = None
    """Text put before every prompt of every stage's data (a task instruction, as in managed RLHF services)."""
    seed: int = 0
    """Seed for every stage."""
    kl_coeff: float = 0.05
    """β, the KL penalty coefficient of PPO."""
    sft_train_steps: int = 500
    """SFT optimiser steps."""
    reward_model_train_steps: int = 500
    """Reward-model optimiser steps."""
    reinforcement_learning_train_steps: int = 100
    """PPO steps (each a batch of rollouts and its updates)."""
    sft_learning_rate_multiplier: float = 1.0
    """Multiplies the SFT stage's learning rate."""
    reward_model_learning_rate_multiplier: float = 1.0
    """Multiplies the reward stage's learning rate."""
    reinforcement_learning_rate_multiplier: float = 1.0
    """Multiplies the PPO stage's learning rate."""
    prompt_sequence_length: int = 256
    """Longest prompt in tokens (longer prompts lose their start)."""
    target_sequence_length: int = 64
    """Longest answer in tokens."""
    gold: str | None = None
    """An extra 'module:function(prompts, answers, ended)' score to track and evaluate (e.g. an oracle)."""
    eval_n: int = 200
    """Held-out prompts in the side-by-side evaluation."""
    sft: dict[str, Any] = field(default_factory=dict)
    """More SFT keys (see `rlxf sft --help`), e.g. {batch_size: 16, lr: 1e-4}."""
    reward: dict[str, Any] = field(default_factory=dict)
    """More reward-model keys (see `rlxf reward --help`); with labeller 'tinyworld', reward.tinyworld
    holds `rlxf tinyworld preferences` keys, and its policy list may name this run's models as
    'run:base' and 'run:sft' (default: the SFT model alone)."""
    ppo: dict[str, Any] = field(default_factory=dict)
    """More PPO keys (see `rlxf ppo --help`)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        if self.sft_model is None and self.demonstrations is None:
            raise ConfigError("give demonstrations (SFT data) or sft_model (an SFT model to start from)")
        if self.reward_model is None and self.preferences is None and self.labeller == "none":
            raise ConfigError("give preferences, a labeller to make them, or reward_model (a trained one)")
        if self.instruction and self.labeller == "tinyworld" and self.preferences is None and self.reward_model is None:
            raise ConfigError("instruction cannot reach the comparisons labeller 'tinyworld' samples on its own "
                              "prompts; give preferences or reward_model, or drop the instruction")
        if self.kl_coeff < 0:
            raise ConfigError(f"kl_coeff must be ≥ 0, got {self.kl_coeff}")
        for name in ("sft_train_steps", "reward_model_train_steps", "reinforcement_learning_train_steps",
                     "prompt_sequence_length", "target_sequence_length", "eval_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("sft_learning_rate_multiplier", "reward_model_learning_rate_multiplier",
                     "reinforcement_learning_rate_multiplier"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


def run(cfg: Config) -> dict:
    """Run every stage, then write ``summary.json`` and ``report.html``."""
    result = run_stages(cfg)
    from rlxf.evaluate.report import PIPELINE_TITLE

    write_outputs(result, title=PIPELINE_TITLE)
    return result["summary"]


def run_stages(cfg: Config) -> dict:
    """Run (or reuse) every stage; returns summaries, the evaluation and the output dir."""
    out = Path(cfg.out).resolve()  # the stages' paths read the same however out is written
    out.mkdir(parents=True, exist_ok=True)
    _check_stage_configs(cfg, out)
    seconds: dict[str, float] = {}
    files = _with_instruction(cfg, out)
    prompts, eval_prompts = files["prompts"], files["eval_prompts"]

    timer = Timer()
    sft_model, sft_summary = cfg.sft_model, None
    if sft_model is None:
        sft_summary = _sft(cfg, files["demonstrations"], out / "sft")
        sft_model = sft_summary["final"]
    seconds["sft"] = timer.elapsed()

    timer = Timer()
    pref_summary, preferences, pref_eval = None, files["preferences"], None
    if cfg.reward_model is None and preferences is None:
        _check_lineage(out, "preferences", ["sft"])
        pref_summary = _tinyworld_preferences(cfg, sft_model, out / "preferences")
        # this folder's files, not the paths its summary names (a copied OUT would read the original's)
        preferences = str(out / "preferences" / "rankings_train.jsonl")
        pref_eval = str(out / "preferences" / "rankings_heldout.jsonl")
    seconds["preferences"] = timer.elapsed()

    timer = Timer()
    reward_model, reward_summary = cfg.reward_model, None
    if reward_model is None:
        _check_lineage(out, "reward", ["sft", "preferences"])
        reward_summary = _reward(cfg, sft_model, preferences, pref_eval, out / "reward")
        reward_model = reward_summary["final"]
    seconds["reward"] = timer.elapsed()

    timer = Timer()
    _check_lineage(out, "ppo", ["sft", "reward"])
    ppo_summary = _ppo(cfg, sft_model, reward_model, prompts, eval_prompts, out / "ppo")
    seconds["ppo"] = timer.elapsed()

    timer = Timer()
    evaluation = _evaluate(cfg, sft_model, ppo_summary["final"], reward_model, eval_prompts, out / "eval",
                           lineage=_summaries(out, ["sft", "reward", "ppo"]))
    seconds["evaluate"] = timer.elapsed()
    # the config of the run this folder holds (written once the stages have taken it)
    (out / "pipeline.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    summary = {
        "models": {"base": cfg.base_model, "sft": sft_model, "reward": reward_model, "ppo": ppo_summary["final"]},
        "kl": {"final": ppo_summary["kl.final"]},
        "reward_model": _reward_headline(reward_summary),
        "sxs": evaluation["summary"],
        "seconds": seconds,
    }
    stages = {"sft": sft_summary, "preferences": pref_summary, "reward": reward_summary, "ppo": ppo_summary}
    return {"summary": summary, "stages": stages, "evaluation": evaluation, "out": out}


# ----------------------------------------------------------------------------- stages

def _summaries(out: Path, stages: list[str]) -> dict[str, str]:
    """A fingerprint of each earlier stage's run: the hash of its ``summary.json``, which a
    stage writes once, when it finishes (a resumed or reused stage keeps it; a copied OUT
    too). Stages this pipeline did not run (a given ``sft_model``) have none."""
    return {name: hashlib.sha256((out / name / "summary.json").read_bytes()).hexdigest()[:16]
            for name in stages if (out / name / "summary.json").is_file()}


def _check_lineage(out: Path, stage: str, earlier: list[str]) -> None:
    """Refuse to resume or reuse ``stage`` when an earlier stage it was built on has been run
    again since (its folder deleted and trained anew): the stage would keep what it learnt
    from the old run while the summary and report paired it with the new one. Records, in
    ``OUT/lineage.json``, what a stage starting now is built on."""
    from rlxf.runs import Run

    path = out / "lineage.json"
    lineage = json.loads(path.read_text()) if path.is_file() else {}
    now = _summaries(out, earlier)
    folder = out / stage
    begun = folder.is_dir() and (Run(folder).started or (folder / "summary.json").exists())
    before = lineage.get(stage)
    if begun and before is not None and before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise ConfigError(f"{folder} was built on the {', '.join(changed)} run that was in {out} then; it has "
                          f"been run again since. Delete {folder} (and the stages after it) to run it on the new "
                          "one, or pass a new out=DIR")
    lineage[stage] = now
    path.write_text(json.dumps(lineage, indent=2) + "\n")


def _stage_config(module, base: dict, extra: dict, section: str) -> Any:
    """The stage's config from the pipeline's values, then the user's ``sft.*``/``reward.*``/``ppo.*``."""
    merged = _merge(base, extra)
    try:
        return from_dict(module.Config, merged)
    except ConfigError as err:
        raise ConfigError(f"in the pipeline's '{section}' section: {err}") from None


def _check_stage_configs(cfg: Config, out: Path) -> None:
    """Build every stage's config before any stage runs, so a mistake in the ``ppo``
    section stops the pipeline now, not after SFT and the reward model have trained.
    Models and files later stages get from earlier ones are stand-ins here."""
    later = str(out / "<made by an earlier stage>")
    if cfg.sft_model is None:
        _sft_config(cfg, cfg.demonstrations or later, out / "sft")
    if cfg.reward_model is None:
        _reward_config(cfg, later, cfg.preferences or later, None, out / "reward")
        if cfg.preferences is None and cfg.labeller == "tinyworld":
            _tinyworld_preferences_config(cfg, later, out / "preferences")
    _ppo_config(cfg, later, later, cfg.prompts, cfg.eval_prompts, out / "ppo")


def _sft_config(cfg: Config, demonstrations: str, out: Path):
    from rlxf.stages import sft

    stage = _stage_config(sft, {
        "out": str(out), "seed": cfg.seed, "max_steps": cfg.sft_train_steps, "progress": cfg.progress,
        "model": {"name_or_path": cfg.base_model},
        "data": {"train": demonstrations, "max_length": cfg.prompt_sequence_length + cfg.target_sequence_length},
    }, cfg.sft, "sft")
    stage.lr *= cfg.sft_learning_rate_multiplier
    return stage


def _sft(cfg: Config, demonstrations: str, out: Path) -> dict:
    from rlxf.stages import sft

    return sft.run(_sft_config(cfg, demonstrations, out))


RUN_MODELS = ("run:base", "run:sft")
"""Names for this run's own base and SFT model in ``reward.tinyworld.policy``, so a pipeline
config samples comparisons from the SFT model it trains wherever its output goes."""


def _tinyworld_preferences(cfg: Config, sft_model: str, out: Path) -> dict:
    from rlxf.tinyworld import preferences

    return preferences.run(_tinyworld_preferences_config(cfg, sft_model, out))


def _tinyworld_preferences_config(cfg: Config, sft_model: str, out: Path):
    from rlxf.tinyworld import preferences

    settings = dict(cfg.reward.get("tinyworld", {}))
    named = dict(zip(RUN_MODELS, (cfg.base_model, sft_model)))
    writers = settings.pop("policy", "run:sft")
    writers = [named.get(w, w) for w in writers] if isinstance(writers, list) else named.get(writers, writers)
    try:
        return from_dict(preferences.Config, {
            "policy": writers, "out": str(out), "seed": cfg.seed, "max_new_tokens": cfg.target_sequence_length,
            "progress": cfg.progress, **settings})
    except ConfigError as err:
        raise ConfigError(f"in the pipeline's 'reward.tinyworld' section: {err}") from None


def _reward_config(cfg: Config, sft_model: str, train: str, heldout: str | None, out: Path):
    from rlxf.stages import reward

    extra = {k: v for k, v in cfg.reward.items() if k != "tinyworld"}
    data = {"train": train, "max_length": cfg.prompt_sequence_length + cfg.target_sequence_length}
    if heldout:
        data["eval"] = heldout
    stage = _stage_config(reward, {
        "out": str(out), "seed": cfg.seed, "max_steps": cfg.reward_model_train_steps, "progress": cfg.progress,
        "model": {"name_or_path": sft_model}, "data": data,
    }, extra, "reward")
    stage.lr *= cfg.reward_model_learning_rate_multiplier
    return stage


def _reward(cfg: Config, sft_model: str, train: str, heldout: str | None, out: Path) -> dict:
    from rlxf.stages import reward

    return reward.run(_reward_config(cfg, sft_model, train, heldout, out))


def _ppo(cfg: Config, sft_model: str, reward_model: str, prompts: str, eval_prompts: str, out: Path) -> dict:
    from rlxf.stages import ppo

    return ppo.run(_ppo_config(cfg, sft_model, reward_model, prompts, eval_prompts, out))


def _ppo_config(cfg: Config, sft_model: str, reward_model: str, prompts: str, eval_prompts: str, out: Path):
    from rlxf.stages import ppo

    base: dict[str, Any] = {
        "out": str(out), "seed": cfg.seed, "max_steps": cfg.reinforcement_learning_train_steps,
        "progress": cfg.progress,
        "model": {"name_or_path": sft_model},
        "reward": {"model": reward_model, "max_length": cfg.prompt_sequence_length + cfg.target_sequence_length},
        "rollout": {"prompts": prompts, "max_prompt_length": cfg.prompt_sequence_length,
                    "max_new_tokens": cfg.target_sequence_length},
        "kl": {"coef": cfg.kl_coeff},
        "eval": {"prompts": eval_prompts, "n": min(cfg.eval_n, 128)},
        "ptx": {"max_length": cfg.prompt_sequence_length + cfg.target_sequence_length},
    }
    if cfg.pretrain:
        base["ptx"]["data"] = cfg.pretrain
    if cfg.pretrain_eval:
        base["eval"]["lm_data"] = cfg.pretrain_eval
    if cfg.gold:
        base["track"] = {"gold": cfg.gold}
    stage = _stage_config(ppo, base, cfg.ppo, "ppo")
    stage.lr *= cfg.reinforcement_learning_rate_multiplier
    return stage


def _evaluate(cfg: Config, sft_model: str, ppo_model: str, reward_model: str, eval_prompts: str, out: Path,
              lineage: dict[str, str] | None = None) -> dict:
    """SFT vs PPO side by side on held-out prompts, scored by the reward model (and gold);
    a finished evaluation is reused while its settings and the runs of the models it
    compares (``lineage``, :func:`_summaries`) are the same, and done again otherwise."""
    from rlxf.data.formats import load_prompts
    from rlxf.evaluate.sxs import reward_scorer, side_by_side, summarise
    from rlxf.models.generation import generate
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    done, used = out / "summary.json", out / "settings.json"
    # what the evaluation depends on; a finished one is reused only if all of it is the same
    settings = {"sft": sft_model, "ppo": ppo_model, "reward": reward_model, "prompts": eval_prompts,
                "eval_n": cfg.eval_n, "max_new_tokens": cfg.target_sequence_length, "seed": cfg.seed, "gold": cfg.gold,
                "runs": lineage or {}}
    if done.exists() and used.exists() and json.loads(used.read_text()) == settings:
        from rlxf.evaluate.report import read_sxs

        frame = read_sxs(out / "sxs.csv")  # answers stay text, even "NA"
        frame.attrs.update(name_a="sft", name_b="ppo")
        return {"summary": json.loads(done.read_text()), "frame": frame}
    if done.exists():
        log.info("the evaluation's settings changed since it ran: evaluating again")
    prompts = list(load_prompts(eval_prompts, limit=cfg.eval_n))
    answers = {}
    for name, path in (("sft", sft_model), ("ppo", ppo_model)):
        model = load_causal_lm(ModelConfig(name_or_path=path))
        gens = generate(model, load_tokenizer(path), prompts, max_new_tokens=cfg.target_sequence_length,
                        key="target_sequence_length", seed=cfg.seed + 11, progress=cfg.progress)
        answers[name] = gens
    scorers = {"reward": reward_scorer(reward_model)}
    if cfg.gold:
        from rlxf.config import import_scorer

        scorers["gold"] = import_scorer(cfg.gold, "gold")
    frame = side_by_side(prompts, [g.text for g in answers["sft"]], [g.text for g in answers["ppo"]],
                         ended_a=[g.ended for g in answers["sft"]], ended_b=[g.ended for g in answers["ppo"]],
                         scorers=scorers, name_a="sft", name_b="ppo")
    summary = summarise(frame)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "sxs.csv", index=False)
    used.write_text(json.dumps(settings, indent=2) + "\n")
    done.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return {"summary": summary, "frame": frame}


# ----------------------------------------------------------------------------- helpers

def _with_instruction(cfg: Config, out: Path) -> dict[str, str | None]:
    """The data files, each rewritten under ``out/data/`` with ``instruction`` before every
    prompt when one is set: PPO's and the evaluation's prompts, and the demonstrations and
    comparisons the SFT and reward models learn from, so every stage sees prompts alike."""
    files = {"prompts": cfg.prompts, "eval_prompts": cfg.eval_prompts, "demonstrations": cfg.demonstrations,
             "preferences": cfg.preferences}
    if not cfg.instruction:
        return files
    from rlxf.data.formats import load_comparisons, load_demonstrations, load_prompts
    from rlxf.data.readers import write_jsonl

    def instructed(prompt, path: str) -> str:
        if not isinstance(prompt, str):
            raise ConfigError(f"instruction applies to text prompts; {path} holds conversations "
                              "(put the instruction in a system message instead)")
        return f"{cfg.instruction.rstrip()}\n\n{prompt.lstrip()}"

    def skip_bad(section: dict) -> bool:
        return bool(section.get("data", {}).get("skip_bad_rows", False))

    rows: dict[str, list] = {}
    if cfg.prompts:
        rows["prompts"] = [{"prompt": instructed(p, cfg.prompts)} for p in load_prompts(cfg.prompts)]
    if cfg.eval_prompts:
        rows["eval_prompts"] = [{"prompt": instructed(p, cfg.eval_prompts)} for p in load_prompts(cfg.eval_prompts)]
    if cfg.demonstrations and cfg.sft_model is None:
        rows["demonstrations"] = [  # pre-training text (no prompt) stays as it is
            {"text": d.completion} if d.prompt == "" else replace(d, prompt=instructed(d.prompt, cfg.demonstrations))
            for d in load_demonstrations(cfg.demonstrations, skip_bad=skip_bad(cfg.sft),
                                         skip_key="sft.data.skip_bad_rows")]
    if cfg.preferences and cfg.reward_model is None:
        rows["preferences"] = [replace(c, prompt=instructed(c.prompt, cfg.preferences))
                               for c in load_comparisons(cfg.preferences, skip_bad=skip_bad(cfg.reward))]
    # the file's name holds the instruction's hash: with another instruction the stages are
    # given other data files, and a stage that has begun refuses them (its data changed)
    digest = hashlib.sha256(cfg.instruction.encode()).hexdigest()[:10]
    for name, kept in rows.items():
        target = out / "data" / f"{name}.instructed-{digest}.jsonl"
        write_jsonl(target, kept)
        files[name] = str(target)
    return files


def _reward_headline(summary: dict | None) -> dict:
    if not summary:
        return {}
    heldout = summary.get("heldout") or {}
    return {"heldout_label_accuracy": heldout.get("accuracy"), "heldout_ece": heldout.get("ece")}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_outputs(result: dict, *, title: str) -> None:
    """``summary.json`` and ``report.html`` of a pipeline result."""
    from rlxf.evaluate.report import pipeline_win_rates, write_report

    out = result["out"]
    (out / "summary.json").write_text(json.dumps(result["summary"], indent=2, default=float) + "\n")
    write_report(out, _report_stages(out, result["stages"]), sxs=result["evaluation"]["frame"],
                 win_rates=result.get("win_rates") or pipeline_win_rates(result["evaluation"]["summary"]),
                 headline=result["summary"], title=title)


def _report_stages(out: Path, stages: dict) -> list[dict]:
    views = []
    for name, summary in stages.items():
        if summary is None:
            continue
        run_dir = out / name
        views.append({"name": name, "config": str(run_dir / "config.yaml"), "summary": summary,
                      "metrics": str(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else None})
    return views


