"""Side-by-side table: two models' answers to the same prompts, with their scores.

    rlxf sxs model_a=runs/sft/final model_b=runs/ppo/final prompts=heldout.jsonl \\
        reward_model=runs/reward/final gold=rlxf.tinyworld.evaluate:gold_totals \\
        name_a=sft name_b=ppo out=runs/sxs
    rlxf sxs data=answers.jsonl column_a=sft column_b=ppo out=runs/sxs

Answers come either from two models, each sampling one answer per prompt of an
eval prompt file (:func:`rlxf.models.generation.generate`, same seed for both), or
from a JSONL/JSON/Parquet/CSV file with a prompt column and two answer columns
(answers read from a file count as ended, unless a boolean column ``<column>_ended``
says otherwise; in the ``sxs.csv`` this command writes, ``ended_a``/``ended_b``). A
sampled answer is cut before its first ``generation.stop`` string (by default the next
dialogue turn, so an answer to an Anthropic HH prompt is not scored together with a
"Human:" turn the model made up) and then counts as ended. Each answer is scored by the
reward model and by the ``gold`` function when they are configured.

Output in ``out``: ``sxs.csv`` and ``sxs.html`` (the table; model output is text,
always HTML-escaped), ``summary.json`` (per score: means, and win rates with ties
counted half and a Wilson interval, :func:`wilson_interval`) and ``config.yaml``; the
first rows are printed as a table on the terminal.

:func:`side_by_side` builds the same table from answers already in memory (the
pipeline calls it); :class:`AnswersConfig` and :func:`collect_answers` are shared
with ``rlxf autosxs``.
"""

from __future__ import annotations

import html
import logging
import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

from rlxf.config import import_scorer
from rlxf.data.records import Prompt
from rlxf.errors import ConfigError, DataError
from rlxf.models.generation import DIALOGUE_TURNS, check_stop  # light: torch only in generate()
from rlxf.models.loading import DType, checkpoint
from rlxf.runs import Run, Timer

log = logging.getLogger("rlxf")

Scorer = Callable[[list, list[str], list[bool]], list[float]]
"""``(prompts, answers, ended) -> one float per answer``: PPO's ``reward.function`` shape."""


@dataclass(kw_only=True)
class GenerationConfig:
    max_new_tokens: int = 64
    """Longest sampled answer, in tokens."""
    temperature: float = 1.0
    """Sampling temperature (0 = greedy decoding)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    separator: str = " "
    """Text between a plain-text prompt and its answer (as in training)."""
    stop: list[str] = field(default_factory=lambda: list(DIALOGUE_TURNS))
    """Cut each answer before the first of these strings (the answer then counts as ended);
    default: the next dialogue turn (rlxf.models.generation.DIALOGUE_TURNS); []: keep all
    max_new_tokens tokens."""
    batch_size: int = 32
    """Prompts per generation batch."""
    seed: int = 0
    """Sampling seed, the same for both models."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    dtype: DType = "float32"
    """Weight dtype of the two models (and of the reward model)."""

    def validate(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("generation.temperature must be ≥ 0 and generation.top_p in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("generation.max_new_tokens and generation.batch_size must be ≥ 1")
        check_stop(self.stop, "generation.stop")


@dataclass(kw_only=True)
class AnswersConfig:
    """Where the two answers to each prompt come from: a file, or two models."""

    data: str | None = None
    """A JSONL/JSON/Parquet/CSV file with a prompt column and two answer columns; null samples from model_a/model_b."""
    prompt_column: str = "prompt"
    """Column of data holding the prompt (text, or a list of {role, content} messages)."""
    column_a: str = "answer_a"
    """Column of data holding answer A."""
    column_b: str = "answer_b"
    """Column of data holding answer B."""
    split: str | None = None
    """Split to read from a saved HF DatasetDict (data only)."""
    skip_bad_rows: bool = False
    """Skip malformed rows of data (counted in the summary) instead of stopping at the first one."""
    model_a: str | None = None
    """Model A (e.g. the SFT baseline): a Hugging Face folder or hub id."""
    model_b: str | None = None
    """Model B (e.g. the tuned policy)."""
    prompts: str | None = None
    """Eval prompts both models answer: any file rlxf.data.load_prompts reads."""
    name_a: str = "A"
    """What to call A in tables and reports (e.g. sft)."""
    name_b: str = "B"
    """What to call B (e.g. ppo)."""
    limit: int | None = None
    """Use only the first this many prompts (or rows of data); null uses all."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """How model_a and model_b sample their answers."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        models = {"model_a": self.model_a, "model_b": self.model_b, "prompts": self.prompts}
        if self.data is not None and any(models.values()):
            raise ConfigError("set either data (a file of answers) or model_a, model_b and prompts, not both")
        if self.data is None and not all(models.values()):
            missing = [k for k, v in models.items() if not v]
            raise ConfigError(f"no answers: set data=FILE with two answer columns, or model_a, model_b and "
                              f"prompts ({', '.join(missing)} missing)")
        if self.column_a == self.column_b:
            raise ConfigError(f"column_a and column_b are both '{self.column_a}'")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be ≥ 1 or null, got {self.limit}")


@dataclass(kw_only=True)
class Config(AnswersConfig):
    """``rlxf sxs``: a side-by-side table of two models' answers and their scores."""

    out: str
    """Output directory (sxs.csv, sxs.html, summary.json, config.yaml)."""
    reward_model: str | None = None
    """Reward model directory (the final/ of rlxf reward) that scores both answers; null: no reward column."""
    reward_max_length: int = 512
    """Tokens of prompt + answer the reward model reads."""
    gold: str | None = None
    """A gold score 'module:function(prompts, answers, ended) -> list[float]' (rlxf.tinyworld.evaluate:gold_totals)."""
    show_rows: int = 10
    """Rows printed on the terminal (all rows go to the files)."""
    cell_width: int = 48
    """Characters per terminal cell before it is cut with '…'."""

    def validate(self) -> None:
        super().validate()
        if self.gold is not None and ":" not in self.gold:
            raise ConfigError(f"gold must be 'module:function', got {self.gold!r}")
        if self.show_rows < 0 or self.cell_width < 8:
            raise ConfigError("show_rows must be ≥ 0 and cell_width ≥ 8")


@dataclass
class Answers:
    """Two answers per prompt. ``extra`` holds other requested columns of the input
    file; ``lines`` the row's line in it (for error messages), both empty for sampled answers."""

    prompts: list[Prompt]
    a: list[str]
    b: list[str]
    ended_a: list[bool]
    ended_b: list[bool]
    extra: dict[str, list] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)
    source: str = ""
    skipped: int = 0


def run(cfg: Config) -> dict:
    """Collect the answers, score them, write sxs.csv/sxs.html/summary.json, print the first rows."""
    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        log.info("%s is already complete; delete it to compare again", run_dir.out)
        return run_dir.summary()
    timer = Timer()
    gold = import_scorer(cfg.gold, "gold") if cfg.gold else None  # a mistake here stops the run before sampling
    if cfg.reward_model:
        from rlxf.models.reward import check_reward_model

        check_reward_model(cfg.reward_model)
    # the reward model reads the prompts too: its tokenizer is checked with the models' before any sampling
    answers = collect_answers(cfg, tokenizers={"reward_model": cfg.reward_model} if cfg.reward_model else {},
                              store=run_dir.out)
    scorers: dict[str, Scorer] = {}
    if cfg.reward_model:
        scorers["reward"] = reward_scorer(cfg.reward_model, device=cfg.generation.device,
                                          dtype=cfg.generation.dtype, separator=cfg.generation.separator,
                                          max_length=cfg.reward_max_length, device_key="generation.device")
    if gold is not None:
        scorers["gold"] = gold
    table = side_by_side(answers.prompts, answers.a, answers.b, ended_a=answers.ended_a, ended_b=answers.ended_b,
                         scorers=scorers, name_a=cfg.name_a, name_b=cfg.name_b)
    table.to_csv(run_dir.out / "sxs.csv", index=False)
    (run_dir.out / "sxs.html").write_text(to_html(table, title=f"Side by side: {cfg.name_a} vs {cfg.name_b}"))
    print_table(table, rows=cfg.show_rows, width=cfg.cell_width)
    summary = {"command": "sxs", "source": answers.source, "skipped_rows": answers.skipped,
               "name_a": cfg.name_a, "name_b": cfg.name_b,
               **summarise(table), "table": str(run_dir.out / "sxs.csv"), "seconds": timer.elapsed()}
    run_dir.write_summary(summary)
    return summary


# ----------------------------------------------------------------------------- answers

def collect_answers(cfg: AnswersConfig, *, extra_columns: Sequence[str] = (),
                    tokenizers: Mapping[str, str] | None = None, store: Path | None = None) -> Answers:
    """The answers ``cfg`` describes: read from ``cfg.data``, or sampled from the two models.

    ``tokenizers``: config key -> the model whose tokenizer will also read the prompts (a
    reward model's); it, and model_a's and model_b's, must render every prompt, which is
    checked before any answer is sampled. ``store``: a folder (the run's) where sampled
    answers are kept as they come (``samples_a.jsonl``, ``samples_b.jsonl``), so a re-run
    after a crash samples only the rest.
    """
    if cfg.data is not None:
        answers = read_answers(cfg.data, prompt_column=cfg.prompt_column, column_a=cfg.column_a,
                               column_b=cfg.column_b, extra_columns=extra_columns, limit=cfg.limit, split=cfg.split,
                               skip_bad=cfg.skip_bad_rows)
        _check_prompts(answers.prompts, "data", tokenizers or {})
        return answers
    from rlxf.data.formats import load_prompts

    prompts = list(load_prompts(cfg.prompts, limit=cfg.limit))
    if not prompts:
        raise DataError("holds no prompts", path=cfg.prompts)
    for path in (cfg.model_a, cfg.model_b):  # both exist before either samples
        checkpoint(path, "model")
    _check_prompts(prompts, "prompts", {"model_a": cfg.model_a, "model_b": cfg.model_b, **(tokenizers or {})})
    a, ended_a = sample_answers(cfg.model_a, prompts, cfg.generation, progress=cfg.progress,
                                store=store / "samples_a.jsonl" if store else None)
    b, ended_b = sample_answers(cfg.model_b, prompts, cfg.generation, progress=cfg.progress,
                                store=store / "samples_b.jsonl" if store else None)
    return Answers(prompts, a, b, ended_a, ended_b, source=f"{cfg.model_a} vs {cfg.model_b} on {cfg.prompts}")


def _check_prompts(prompts: list[Prompt], key: str, tokenizers: Mapping[str, str]) -> None:
    """Every conversation in ``prompts`` (read from config key ``key``) renders with each
    tokenizer, named by the config key of its model, before any model loads."""
    from rlxf.data.tokenize import check_prompts
    from rlxf.models.loading import load_tokenizer

    if all(isinstance(p, str) for p in prompts):
        return  # text needs no chat template
    for tokenizer_key, path in tokenizers.items():
        check_prompts(prompts, load_tokenizer(path), key=key, tokenizer_key=tokenizer_key)


def read_answers(path: str, *, prompt_column: str = "prompt", column_a: str = "answer_a",
                 column_b: str = "answer_b", extra_columns: Sequence[str] = (), limit: int | None = None,
                 split: str | None = None, skip_bad: bool = False) -> Answers:
    """Rows of ``path`` with a prompt and two text answers. A bad row raises a
    :class:`DataError` naming its line and field (or, with ``skip_bad``, is counted in
    ``skipped``). Missing extra columns read as None."""
    from rlxf.data.readers import iter_rows

    out = Answers([], [], [], [], [], {c: [] for c in extra_columns}, source=str(path))
    columns: set[str] = set()
    first = True
    for line, row in iter_rows(path, split=split):
        if limit is not None and len(out.a) >= limit:
            break
        if first and isinstance(row, dict):  # a misspelt column is the file's problem, not every row's
            first = False
            _check_columns(row, path, prompt_column=prompt_column, column_a=column_a, column_b=column_b)
        try:
            if isinstance(row, DataError):
                raise row
            prompt = _prompt(row.get(prompt_column), path, line, prompt_column)
            a, ended_a = _answer(row, column_a, path, line)
            b, ended_b = _answer(row, column_b, path, line)
        except DataError as err:
            if not skip_bad:
                raise
            out.skipped += 1
            log.warning("skipped %s", err)
            continue
        columns |= set(row)
        for target, value in ((out.prompts, prompt), (out.a, a), (out.b, b), (out.ended_a, ended_a),
                              (out.ended_b, ended_b), (out.lines, line)):
            target.append(value)
        for column in extra_columns:
            out.extra[column].append(row.get(column))
    if not out.a:
        raise DataError("holds no rows with a prompt and two answers", path=str(path))
    for column in extra_columns:
        if column not in columns:
            raise DataError(f"no row has a column '{column}'; the rows have {sorted(columns)}", path=str(path))
    return out


def _check_columns(row: dict, path, **keys: str) -> None:
    """Refuse a column (``keys``: config key -> column) that the first row lacks, naming the
    key, the row's columns and the nearest of them."""
    import difflib

    for key, column in keys.items():
        if column not in row:
            near = difflib.get_close_matches(column, list(row), n=1)
            hint = f"; did you mean {key}={near[0]}?" if near else f"; set {key} to one of them"
            raise DataError(f"has no column '{column}' ({key}); its first row has {sorted(row)}{hint}",
                            path=str(path))


def _answer(row: dict, column: str, path, line: int) -> tuple[str, bool]:
    value = row.get(column)
    flag = f"{column}_ended"
    if flag not in row and column.startswith("answer_"):  # sxs.csv names it ended_a, ended_b
        flag = "ended_" + column.removeprefix("answer_")
    ended = row.get(flag, True)
    if not isinstance(value, str):
        raise DataError(f"must be the answer text, got {_kind(value)}", path=str(path), line=line, field=column)
    if not isinstance(ended, bool):
        raise DataError(f"must be true or false, got {ended!r}", path=str(path), line=line, field=flag)
    return value, ended


def sample_answers(model_path: str, prompts: list[Prompt], gen: GenerationConfig, *,
                   progress: bool = False, store: Path | None = None) -> tuple[list[str], list[bool]]:
    """One answer per prompt from the model at ``model_path``, cut before its first
    ``gen.stop`` string, and whether each ended (EOS or a stop string). With ``store``
    (a JSONL file), answers are kept there as they are sampled and a re-run after a crash
    samples only the rest (:func:`rlxf.models.generation.generate_stored`)."""
    import torch

    from rlxf.models.generation import generate, generate_stored
    from rlxf.models.loading import ModelConfig, fingerprint, load_causal_lm, load_tokenizer
    from rlxf.training import resolve_device

    model = load_causal_lm(ModelConfig(name_or_path=model_path, dtype=gen.dtype))
    model.to(resolve_device(gen.device, "generation.device"))
    tokenizer = load_tokenizer(model_path)
    log.info("sampling %d answers from %s", len(prompts), model_path)
    settings = dict(max_new_tokens=gen.max_new_tokens, key="generation.max_new_tokens",
                    temperature=max(gen.temperature, 1e-5), top_p=gen.top_p, greedy=gen.temperature == 0,
                    separator=gen.separator, stop=gen.stop)
    if store is None:
        gens = generate(model, tokenizer, prompts, batch_size=gen.batch_size, seed=gen.seed, progress=progress,
                        **settings)
    else:
        identity = {"model": model_path, "weights": fingerprint(model_path), "dtype": gen.dtype,
                    **{k: v for k, v in settings.items() if k != "key"}}
        gens = generate_stored(model, tokenizer, prompts, store, identity=identity, batch_size=gen.batch_size,
                               seed=gen.seed, progress=progress, **settings)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return [g.text for g in gens], [g.ended for g in gens]


def _prompt(value, path, line: int, column: str) -> Prompt:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in value):
        return tuple(value)
    raise DataError(f"must be text or a list of {{role, content}} messages, got {_kind(value)}", path=str(path),
                    line=line, field=column)


def _kind(value) -> str:
    return "nothing (the column is missing)" if value is None else type(value).__name__


# ----------------------------------------------------------------------------- scores

def reward_scorer(path: str, *, device: str = "auto", dtype: DType = "float32", batch_size: int = 32,
                  separator: str = " ", max_length: int = 512, device_key: str = "device") -> Scorer:
    """A :data:`Scorer` giving the reward model's normalised score (rlxf.models.reward);
    ``device_key`` is the config key that chose ``device``, for the error if it is wrong."""
    from rlxf.models.loading import load_tokenizer
    from rlxf.models.reward import load_reward_model, score_texts
    from rlxf.training import resolve_device

    model = load_reward_model(path, dtype=dtype).to(resolve_device(device, device_key))
    tokenizer = load_tokenizer(path)

    def score(prompts: list, answers: list[str], ended: list[bool]) -> list[float]:
        return score_texts(model, tokenizer, prompts, answers, batch_size=batch_size, separator=separator,
                           ended=ended, max_length=max_length)

    return score


# ----------------------------------------------------------------------------- the table

def side_by_side(prompts: Sequence[Prompt], answers_a: Sequence[str], answers_b: Sequence[str], *,
                 ended_a: Sequence[bool] | None = None, ended_b: Sequence[bool] | None = None,
                 scorers: dict[str, Scorer] | None = None, name_a: str = "A", name_b: str = "B"):
    """The side-by-side table as a pandas DataFrame, one row per prompt.

    Columns: ``prompt`` (a conversation rendered as ``Role: content`` lines),
    ``answer_a``, ``answer_b``, and for each scorer ``NAME`` (e.g. ``reward``,
    ``gold``) ``NAME_a`` and ``NAME_b``; with ``ended_*`` given, also ``ended_a`` and
    ``ended_b``. Scorers see the original prompts and the ``ended`` flags (all True
    when not given). ``name_a``/``name_b`` are kept in ``frame.attrs`` for display.
    """
    import pandas as pd

    from rlxf.feedback.ai.templates import context_text

    n = len(prompts)
    if not (len(answers_a) == len(answers_b) == n):
        raise ValueError(f"{n} prompts but {len(answers_a)} A answers and {len(answers_b)} B answers")
    flags_a = list(ended_a) if ended_a is not None else [True] * n
    flags_b = list(ended_b) if ended_b is not None else [True] * n
    columns = {"prompt": [context_text(p) if not isinstance(p, str) else p for p in prompts],
               "answer_a": list(answers_a), "answer_b": list(answers_b)}
    if ended_a is not None or ended_b is not None:
        columns.update(ended_a=flags_a, ended_b=flags_b)
    for name, scorer in (scorers or {}).items():
        columns[f"{name}_a"] = [float(v) for v in scorer(list(prompts), list(answers_a), flags_a)]
        columns[f"{name}_b"] = [float(v) for v in scorer(list(prompts), list(answers_b), flags_b)]
    frame = pd.DataFrame(columns)
    frame.attrs.update(name_a=name_a, name_b=name_b)
    return frame


# ----------------------------------------------------------------------------- win rates

@dataclass(frozen=True)
class WinRate:
    """``rate`` = (wins + ties / 2) / n with its Wilson interval [low, high] at ``level``."""

    rate: float | None
    low: float | None
    high: float | None
    n: int
    wins: int
    ties: int
    level: float
    method: str = "wilson"


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927)::

        p = successes / n,  z = the standard normal quantile at 1 - (1 - level) / 2
        centre = (p + z² / 2n) / (1 + z² / n)
        half   = z / (1 + z² / n) * sqrt(p (1 - p) / n + z² / 4n²)

    Unlike the normal approximation p ± z sqrt(p (1 - p) / n), it stays inside [0, 1]
    and is not zero-width at p = 0 or 1.
    """
    if n <= 0:
        raise ValueError("the Wilson interval needs n ≥ 1")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(choices: Sequence[str | None], side: str = "A", level: float = 0.95) -> WinRate:
    """Win rate of ``side`` over the decided choices ("A"/"B"/"tie"; None is left out), ties half."""
    decided = [c for c in choices if c is not None]
    wins, ties = sum(c == side for c in decided), sum(c == "tie" for c in decided)
    if not decided:
        return WinRate(None, None, None, 0, 0, 0, level)
    low, high = wilson_interval(wins + ties / 2, len(decided), level)
    return WinRate((wins + ties / 2) / len(decided), low, high, len(decided), wins, ties, level)


def score_names(frame) -> list[str]:
    """The scores in a side-by-side table: ``NAME`` for every ``NAME_a``/``NAME_b`` column pair."""
    return [c[:-2] for c in frame.columns
            if c.endswith("_a") and c not in ("answer_a", "ended_a") and f"{c[:-2]}_b" in frame.columns]


def summarise(frame, *, level: float = 0.95) -> dict:
    """Per score: the means of A and B, and the win rates of A and B (higher score
    wins, ties count half) with B's Wilson interval; rows where either score is NaN are
    left out."""
    out: dict = {"rows": len(frame), "scores": {}}
    for name in score_names(frame):
        choices = [None if math.isnan(a) or math.isnan(b) else "A" if a > b else "B" if b > a else "tie"
                   for a, b in zip(frame[f"{name}_a"], frame[f"{name}_b"])]
        b_wins = win_rate(choices, "B", level)
        if not b_wins.n:
            out["scores"][name] = {"n": 0}
            continue
        kept = [c is not None for c in choices]
        out["scores"][name] = {"n": b_wins.n, "mean_a": float(frame[f"{name}_a"][kept].mean()),
                               "mean_b": float(frame[f"{name}_b"][kept].mean()),
                               "win_rate_a": 1.0 - b_wins.rate, "win_rate_b": b_wins.rate, "ties": b_wins.ties,
                               "interval_b": [b_wins.low, b_wins.high], "level": level}
    return out


def display_columns(frame) -> dict[str, str]:
    """Column name → header shown to people (A and B replaced by their names)."""
    a, b = frame.attrs.get("name_a", "A"), frame.attrs.get("name_b", "B")
    heads = {"prompt": "prompt", "answer_a": f"answer of {a}", "answer_b": f"answer of {b}",
             "ended_a": f"{a} ended", "ended_b": f"{b} ended"}
    for name in score_names(frame):
        heads[f"{name}_a"], heads[f"{name}_b"] = f"{name} ({a})", f"{name} ({b})"
    return {c: heads.get(c, c) for c in frame.columns}


def to_html(frame, *, title: str = "Side by side") -> str:
    """A standalone HTML page holding the table. Every cell is HTML-escaped: model
    output is shown as text, never interpreted."""
    table = frame.rename(columns=display_columns(frame)).to_html(
        index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.3f}", classes="sxs", border=0)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{table}\n</body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table.sxs{border-collapse:collapse;width:100%}"
        "table.sxs th,table.sxs td{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left;"
        "white-space:pre-wrap;word-break:break-word}"
        "table.sxs th{background:#f0f0f0}")


def print_table(frame, *, rows: int = 10, width: int = 48, console=None) -> None:
    """The first ``rows`` rows as a rich table on stderr, cells cut to ``width``
    characters. Cells are plain :class:`rich.text.Text`, so ``[bold]`` in an answer is
    shown, not interpreted, and control characters (a model's ``ESC[31m``) are shown as
    escapes (``\\x1b[31m``), never sent to the terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if rows < 1:
        return
    console = console or Console(stderr=True)
    heads = display_columns(frame)
    shown = [c for c in frame.columns if not c.startswith("ended_")]
    table = Table(title=f"side by side: first {min(rows, len(frame))} of {len(frame)} prompts", show_lines=True)
    for c in shown:
        numeric = frame[c].dtype.kind in "fi"
        table.add_column(heads[c], justify="right" if numeric else "left")
    for _, row in frame.head(rows).iterrows():
        table.add_row(*(Text(_cell(row[c], width)) for c in shown))
    console.print(table)


def _cell(value, width: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    text = " ⏎ ".join(str(value).splitlines())
    text = "".join(ch.encode("unicode_escape").decode() if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return text if len(text) <= width else text[:width - 1] + "…"
