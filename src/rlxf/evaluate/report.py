"""One self-contained report.html of a run: what was trained, curves, diagnostics, win rates.

    rlxf report runs=runs/demo out=runs/demo
    rlxf report runs=[runs/sft,runs/reward,runs/ppo] sxs=runs/sxs autosxs=[runs/autosxs] out=runs/report

From code (the pipeline does this)::

    write_report("runs/demo", [Stage("sft", "runs/demo/sft/config.yaml", "runs/demo/sft/summary.json",
                                     "runs/demo/sft/metrics.jsonl"), ...],
                 sxs=side_by_side(...), win_rates={"ppo over sft (gold)": {"rate": .71, "low": .64, "high": .77}})

The page says what was trained on what data, the headline numbers, each stage's
curves (:mod:`rlxf.evaluate.curves`) with their written diagnostics, the win rates
and the side-by-side table. It is one self-contained file: CSS inline, images as
base64 ``data:`` URIs, no JavaScript, no request to anywhere. It is rendered with
Jinja2 with autoescaping on, so model output and config values are always shown as
text. The curves are also written as PNG files under ``OUT/curves/``.

A directory given in ``runs`` that holds run directories rather than being one (a
pipeline's ``OUT``) stands for them, oldest first; its own ``summary.json`` gives the
headline numbers, and the ``rlxf sxs`` / ``rlxf autosxs`` runs among them supply the
side-by-side table and the win rates. So does the evaluation ``rlxf pipeline`` and
``rlxf demo`` write to ``OUT/eval/`` (SFT against PPO: ``sxs.csv``, ``summary.json``,
``settings.json``, no config.yaml), and the report then reads as theirs: the same win
rates (the demo's are its gold win rates, from ``OUT/summary.json``) and title.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlxf.errors import ConfigError, RlxfError

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(kw_only=True)
class Config:
    """``rlxf report``: one self-contained report.html from run directories."""

    runs: list[str]
    """Run directories in pipeline order (each with config.yaml, summary.json, metrics.jsonl), or a pipeline's OUT;
    one directory may be given alone (runs=DIR)."""
    out: str
    """Where report.html (and curves/*.png) are written."""
    sxs: str | None = None
    """An rlxf sxs run directory (or its sxs.csv) whose table is shown; null: any sxs run found in runs."""
    autosxs: list[str] = field(default_factory=list)
    """rlxf autosxs run directories whose win rates are shown (as well as any found in runs)."""
    title: str | None = None
    """The report's title; null: a pipeline's (or the demo's) own title for its OUT, else 'rlxf run report'."""
    gold_key: str = "gold"
    """The metrics.jsonl key of the gold score, when one was tracked."""
    max_sxs_rows: int = 20
    """Rows of the side-by-side table shown."""

    def validate(self) -> None:
        if not self.runs and not self.sxs and not self.autosxs:
            raise ConfigError("nothing to report: give runs=DIR or runs=[DIR, ...] (and/or sxs=DIR, autosxs=DIR)")
        if self.max_sxs_rows < 1:
            raise ConfigError(f"max_sxs_rows must be ≥ 1, got {self.max_sxs_rows}")


@dataclass
class Stage:
    """One stage of the report. ``config`` and ``summary`` are dicts or paths to
    config.yaml / summary.json; ``metrics`` a path to metrics.jsonl (any may be None)."""

    name: str
    config: Mapping | str | Path | None = None
    summary: Mapping | str | Path | None = None
    metrics: str | Path | None = None


def run(cfg: Config) -> dict:
    found = discover(cfg.runs)
    sxs = found.sxs
    win_rates = dict(found.win_rates)
    if cfg.sxs:
        sxs = read_sxs(cfg.sxs)
        win_rates.update(sxs_win_rates(_read_json(Path(cfg.sxs) / "summary.json")))
    for path in cfg.autosxs:
        summary = _read_json(Path(path) / "summary.json")
        if summary.get("command") != "autosxs":
            raise ConfigError(f"autosxs={path}: not an rlxf autosxs run (its summary.json says command "
                              f"{summary.get('command')!r}); list other runs in runs=[...]")
        win_rates.update(autosxs_win_rates(summary))
    if not (found.stages or sxs is not None or win_rates):
        raise ConfigError(f"found no runs to report on in {', '.join(cfg.runs)}")
    title = cfg.title or found.title or "rlxf run report"
    path = write_report(cfg.out, found.stages, sxs=sxs, win_rates=win_rates, title=title,
                        headline=found.headline, gold_key=cfg.gold_key, max_sxs_rows=cfg.max_sxs_rows)
    return {"report": str(path), "stages": [s.name for s in found.stages], "win_rates": len(win_rates),
            "sxs_rows": 0 if sxs is None else len(sxs)}


def write_report(out_dir: str | Path, stages: Sequence[Stage | Mapping], *, sxs=None,
                 win_rates: Mapping[str, Any] | None = None, title: str = "rlxf run report",
                 headline: Mapping | None = None, gold_key: str = "gold", max_sxs_rows: int = 20) -> Path:
    """Write ``out_dir/report.html`` (and the curves as ``out_dir/curves/<stage>_<name>.png``).

    ``stages``: :class:`Stage` objects or dicts with the same keys. ``sxs``: a
    side-by-side DataFrame (:func:`rlxf.evaluate.sxs.side_by_side`). ``win_rates``:
    label → a number, or a dict with ``rate`` (or ``win_rate``), optional ``low``/``high``
    (or ``ci``: [low, high]), ``n``, ``level``, ``note``. ``headline``: the numbers to
    show first (a pipeline's summary.json). Returns the report's path.
    """
    out = Path(out_dir)
    curves_dir = out / "curves"
    views = []
    for i, stage in enumerate(stages):
        stage = stage if isinstance(stage, Stage) else Stage(**stage)
        view = _stage_view(stage, gold_key)
        for fig in view.pop("_figures"):
            curves_dir.mkdir(parents=True, exist_ok=True)
            (curves_dir / f"{i + 1:02d}-{_slug(stage.name)}_{fig.name}.png").write_bytes(fig.png)
        views.append(view)
    html = render_report(title=title, stages=views, headline=_numbers(headline) if headline else [],
                         win_rates=[_win_rate_row(k, v) for k, v in (win_rates or {}).items()],
                         sxs=_sxs_view(sxs, max_sxs_rows) if sxs is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def render_report(**context) -> str:
    """The report template rendered with ``context`` (autoescape on, undefined names are errors)."""
    try:
        import jinja2
    except ImportError:
        raise RlxfError("the HTML report needs jinja2: pip install jinja2 (or pip install 'rlxf[annotate]')") from None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html").render(
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), version=_version(), **context)


# ----------------------------------------------------------------------------- finding runs

@dataclass
class Found:
    """What :func:`discover` found: stages, and the headline, sxs table, win rates and title if any."""

    stages: list[Stage] = field(default_factory=list)
    headline: dict | None = None
    sxs: Any = None
    win_rates: dict = field(default_factory=dict)
    title: str | None = None


def discover(paths: Sequence[str | Path]) -> Found:
    """Sort run directories into stages, a side-by-side table and win rates (module docstring)."""
    found = Found()
    for path in map(Path, paths):
        if not path.is_dir():
            several = "; several directories go in brackets: runs=[DIR1,DIR2]" if "," in str(path) else ""
            raise ConfigError(f"{path}: no such run directory (current folder: {Path.cwd()}){several}")
        if (path / "config.yaml").is_file():
            _add_run(found, path)
            continue
        if _is_pipeline_evaluation(path):  # OUT/eval given alone
            _add_pipeline_evaluation(found, path)
            continue
        children = sorted((p.parent for p in path.glob("*/config.yaml")),
                          key=lambda p: (p / "config.yaml").stat().st_mtime)
        evaluations = sorted(p.parent for p in path.glob("*/settings.json") if _is_pipeline_evaluation(p.parent))
        if not children and not evaluations:
            raise ConfigError(f"{path} is not a run directory (no config.yaml) and holds none")
        if (path / "summary.json").is_file():
            found.headline = _read_json(path / "summary.json")
        for child in children:
            _add_run(found, child)
        for evaluation in evaluations:
            _add_pipeline_evaluation(found, evaluation)
    return found


def _add_run(found: Found, path: Path) -> None:
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    command = summary.get("command")
    if command == "sxs":
        found.sxs = read_sxs(path)
        found.win_rates.update(sxs_win_rates(summary))
    elif command == "autosxs":
        found.win_rates.update(autosxs_win_rates(summary))
    else:
        metrics = path / "metrics.jsonl"
        found.stages.append(Stage(path.name, path / "config.yaml", summary or None,
                                  metrics if metrics.is_file() else None))


# What rlxf.pipeline.run and rlxf.tinyworld.demo.run give write_report for their OUT
# (pipeline.write_outputs), so that `rlxf report` on that OUT rewrites the same page.
PIPELINE_TITLE = "rlxf pipeline report"
DEMO_TITLE = "Tinyworld demo: base → SFT → reward model → PPO"
_DEMO_WIN_RATES = {"sft_vs_base": "SFT over base (gold)", "ppo_vs_sft": "PPO over SFT (gold)",
                   "ppo_vs_base": "PPO over base (gold)"}


def _is_pipeline_evaluation(path: Path) -> bool:
    """Whether ``path`` is the evaluation a pipeline writes to ``OUT/eval`` (rlxf.pipeline._evaluate):
    SFT's and PPO's answers side by side, with the settings they were made with; no config.yaml."""
    if (path / "config.yaml").exists() or not all((path / f).is_file() for f in ("sxs.csv", "summary.json")):
        return False
    try:  # another tool's settings.json is no reason to fail
        settings = json.loads((path / "settings.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and {"sft", "ppo"} <= settings.keys()


def _add_pipeline_evaluation(found: Found, path: Path) -> None:
    """The pipeline's evaluation as its own report shows it: the table with the names sft
    and ppo, and the win rates (the demo's gold ones when the headline holds them)."""
    found.sxs = read_sxs(path)
    found.sxs.attrs.update(name_a="sft", name_b="ppo")  # its summary.json (sxs.summarise) names no side
    gold = demo_win_rates(found.headline or {})
    found.win_rates.update(gold or pipeline_win_rates(_read_json(path / "summary.json")))
    found.title = DEMO_TITLE if gold else PIPELINE_TITLE


def pipeline_win_rates(summary: Mapping) -> dict:
    """PPO's win rates over SFT per score of a pipeline's evaluation (the ``summary.json``
    of :func:`rlxf.evaluate.sxs.summarise`, SFT as A, PPO as B), for :func:`write_report`."""
    rates = {}
    for score, stats in summary.get("scores", {}).items():
        if stats.get("n"):
            low, high = stats["interval_b"]
            rates[f"PPO over SFT by {score}"] = {"rate": stats["win_rate_b"], "low": low, "high": high,
                                                 "n": stats["n"], "level": stats["level"]}
    return rates


def demo_win_rates(headline: Mapping) -> dict:
    """The gold win rates of ``rlxf demo`` from its ``OUT/summary.json`` (``win_rate``:
    sft_vs_base, ppo_vs_sft, ppo_vs_base); empty for any other summary."""
    rates = headline.get("win_rate")
    if not isinstance(rates, Mapping) or not all(isinstance(rates.get(k), (int, float)) for k in _DEMO_WIN_RATES):
        return {}
    return {label: rates[key] for key, label in _DEMO_WIN_RATES.items()}


def read_sxs(path: str | Path):
    """The side-by-side table of an ``rlxf sxs`` run directory (or its sxs.csv), names restored."""
    import pandas as pd

    path = Path(path)
    csv = path / "sxs.csv" if path.is_dir() else path
    if not csv.is_file():
        raise ConfigError(f"{path}: no sxs.csv (write one with rlxf sxs)")
    frame = pd.read_csv(csv, keep_default_na=False)  # answers stay text, even "NA" or ""
    for column in frame.columns:  # scores with an empty cell were read as text: back to numbers (NaN)
        if column not in ("prompt", "answer_a", "answer_b") and not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    summary_path = csv.parent / "summary.json"
    if summary_path.is_file():
        summary = _read_json(summary_path)
        frame.attrs.update(name_a=summary.get("name_a", "A"), name_b=summary.get("name_b", "B"))
    return frame


def sxs_win_rates(summary: Mapping) -> dict:
    """Win rates of B over A per score of an ``rlxf sxs`` summary, for :func:`write_report`."""
    a, b = summary.get("name_a", "A"), summary.get("name_b", "B")
    out = {}
    for name, s in summary.get("scores", {}).items():
        if s.get("n"):
            low, high = s.get("interval_b") or (None, None)
            out[f"{b} over {a} ({name} score)"] = {
                "rate": s["win_rate_b"], "low": low, "high": high, "level": s.get("level"), "n": s["n"],
                "note": f"mean {name}: {_fmt(s['mean_b'])} vs {_fmt(s['mean_a'])}; {s.get('ties', 0)} ties"}
    return out


def autosxs_win_rates(summary: Mapping) -> dict:
    """The AI judge's (and the humans') win rate of A from an ``rlxf autosxs`` summary."""
    a, b = summary.get("name_a", "A"), summary.get("name_b", "B")
    out = {}
    w = summary.get("win_rate_a") or {}
    if w.get("rate") is not None:
        out[f"{a} over {b} (AI judge)"] = {**w, "note": f"judge {summary.get('judge', '?')}; {w['ties']} ties"}
    human = summary.get("human")
    if human and human["win_rate_a"].get("rate") is not None:
        agreement = human["agreement"]
        accuracy = "–" if agreement["accuracy"] is None else f"{agreement['accuracy']:.0%}"
        out[f"{a} over {b} (humans)"] = {**human["win_rate_a"],
                                         "note": f"the judge agrees with the humans on {accuracy} of "
                                                 f"{agreement['n']} pairs (Cohen's kappa "
                                                 f"{_fmt(agreement['cohen_kappa'])})"}
    return out


# ----------------------------------------------------------------------------- view models

_FACTS = (  # (dotted config key, what to call it), shown when present
    ("model.name_or_path", "model"), ("policy", "policy"), ("model_a", "model A"), ("model_b", "model B"),
    ("data.train", "training data"), ("data.eval", "held-out data"), ("data", "data"),
    ("rollout.prompts", "training prompts"), ("eval.prompts", "held-out prompts"), ("prompts", "prompts"),
    ("reward.model", "reward model"), ("reward.function", "reward function"), ("judge.model", "judge"),
    ("template", "judge template"), ("kl.coef", "KL coefficient β"), ("kl.adaptive", "adaptive KL"),
    ("model.lora.enabled", "LoRA"), ("model.lora.r", "LoRA rank"),
    ("ptx.coef", "pre-training mix γ"), ("lr", "learning rate"), ("max_steps", "max steps"), ("epochs", "epochs"),
    ("batch_size", "batch size"), ("rollout.batch_size", "answers per PPO step"), ("seed", "seed"),
)


def _stage_view(stage: Stage, gold_key: str) -> dict:
    from rlxf.evaluate.curves import diagnose_frame, figures, read_metrics

    config = _load(stage.config, yaml.safe_load) or {}
    summary = _load(stage.summary, json.loads) or {}
    kind = summary.get("stage") or summary.get("command") or _kind_of(config) or stage.name
    metrics = Path(stage.metrics) if stage.metrics else None
    has_metrics = metrics is not None and metrics.is_file() and bool(metrics.read_text().strip())
    frame = read_metrics(metrics) if has_metrics else None
    reached = int(frame["step"].max()) if frame is not None and "step" in frame else None
    lora = _dotted(config, "model.lora.enabled")
    view = {"name": stage.name, "description": _describe(kind, config, summary, reached),
            "facts": [(label, _fmt(v)) for key, label in _FACTS
                      if (v := _dotted(config, key)) is not None and not isinstance(v, dict)
                      and not (key == "epochs" and config.get("max_steps"))
                      and not (key == "model.lora.r" and not lora)],
            "numbers": _numbers(summary), "config_yaml": yaml.safe_dump(config, sort_keys=False) if config else "",
            "figures": [], "diagnostics": [], "metrics_note": "", "_figures": []}
    if frame is None:
        view["metrics_note"] = "No per-step metrics were logged for this stage."
        return view
    optimised = "reward-function score" if _dotted(config, "reward.function") else "reward-model score"
    figs = figures(frame, gold_key=gold_key, reward=optimised)
    view["_figures"] = figs
    view["figures"] = [{"caption": f.caption, "base64": base64.b64encode(f.png).decode("ascii")} for f in figs]
    view["diagnostics"] = diagnose_frame(frame, gold_key=gold_key)
    if not figs:
        view["metrics_note"] = "The logged metrics hold no loss, accuracy or reward curve to draw."
    return view


def _kind_of(config: Mapping) -> str | None:
    """The training stage a config is of (for a run that wrote no summary.json), by the
    sections only that stage has; ``None`` for any other command."""
    if isinstance(config.get("rollout"), dict) and isinstance(config.get("kl"), dict):
        return "ppo"
    if isinstance(config.get("normalize"), dict):
        return "reward"
    if isinstance(config.get("data"), dict) and "packing" in config["data"]:
        return "sft"
    return None


def _describe(kind: str, config: Mapping, summary: Mapping, reached: int | None = None) -> str:
    """One sentence on what a stage did, from its config and summary; ``reached``: the last
    step it logged metrics for, said of a run that did not finish."""
    model = _dotted(config, "model.name_or_path") or "?"
    if _dotted(config, "model.lora.enabled"):
        model += " (LoRA)"
    steps = f" for {summary['steps']} steps" if summary.get("steps") else ""
    if not summary and not config:
        return "no config or summary found."
    done = "" if summary else (" It did not finish (no summary.json)" + (
        f"; its metrics reach step {reached}." if reached is not None else ", and logged no metrics."))
    if kind == "sft":
        return (f"supervised fine-tuning of {model} on the demonstrations in {_dotted(config, 'data.train')}"
                f"{steps}.{done}")
    if kind == "reward":
        return (f"a reward model started from {model}, trained on the comparisons in "
                f"{_dotted(config, 'data.train')}{steps}.{done}")
    if kind == "ppo":
        reward = _dotted(config, "reward.model") or _dotted(config, "reward.function")
        return (f"PPO on {model} against the reward {reward}, with prompts from {_dotted(config, 'rollout.prompts')}"
                f" and KL coefficient {_dotted(config, 'kl.coef')}{steps}.{done}")
    model = _dotted(config, "model.name_or_path") or config.get("policy") or config.get("model_a")
    data = _dotted(config, "data.train") or config.get("data") or config.get("prompts")
    uses = (f" with {model}" if model else "") + (f" on {data}" if isinstance(data, str) else "")
    return f"{kind}{uses}{steps}.{done}"


def _sxs_view(frame, max_rows: int) -> dict:
    from rlxf.evaluate.sxs import display_columns, score_names

    heads = display_columns(frame)
    columns = [c for c in frame.columns if not c.startswith("ended_")]
    scores = score_names(frame)
    rows = []
    for _, row in frame.head(max_rows).iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                other = c[:-1] + ("b" if c.endswith("_a") else "a")
                better = c[:-2] in scores and not math.isnan(value) and value > row[other]
                cells.append({"text": _fmt(value), "kind": "num better" if better else "num"})
            else:
                cells.append({"text": str(value), "kind": "text"})
        rows.append(cells)
    return {"heads": [heads[c] for c in columns], "rows": rows, "total": len(frame), "scores": scores}


def _win_rate_row(label: str, value) -> dict:
    if isinstance(value, (int, float)):
        value = {"rate": value}
    rate = value.get("rate", value.get("win_rate"))
    low, high = value.get("low"), value.get("high")
    if low is None and value.get("ci"):
        low, high = value["ci"]
    level = value.get("level")
    interval = "" if low is None else (f"{low:.1%} – {high:.1%}" + (f" ({level:.0%})" if level else ""))
    return {"label": label, "rate": "–" if rate is None else f"{rate:.1%}", "interval": interval,
            "n": value.get("n", ""), "note": value.get("note", "")}


def _numbers(summary: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """A summary flattened to (dotted key, formatted value) rows; long lists are left out."""
    rows = []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            rows += _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)) and len(value) > 8:
            continue
        else:
            rows.append((f"{prefix}{key}", _fmt(value)))
    return rows


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


def _dotted(config: Mapping, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _load(value, parse):
    if value is None or isinstance(value, Mapping):
        return value
    path = Path(value)
    return parse(path.read_text()) if path.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name) or "stage"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlxf")
    except PackageNotFoundError:
        return "(source)"
