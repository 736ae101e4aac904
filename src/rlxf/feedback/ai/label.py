"""Label answer pairs with an AI judge (RLAIF): soft preference labels for a reward model.

    rlxf label data=pairs.jsonl out=runs/labels judge.model=path/to/judge template=helpful

Input (``data``): any pair file :func:`rlxf.data.load_preferences` reads -- its
``chosen``/``rejected`` are taken as two *unlabelled* answers A and B (any existing
label is ignored), rankings give all their pairs -- or rows ``{"prompt", "answers":
[...]}`` with K >= 2 answers, which give all C(K, 2) pairs.

Output, in the run directory ``out``:

- ``preferences.jsonl``: one row per labelled pair, ``prompt/chosen/rejected/prob_chosen``
  where ``chosen`` is the answer the judge prefers, so ``prob_chosen >= 0.5`` (ties go
  to A). ``rlxf reward`` reads it as soft labels. Extra fields record how the label
  came about: ``p_first_ab``/``p_first_ba`` (the judge's P(position 1) in each order),
  ``flipped``, ``principle``, ``rationales`` (chain-of-thought), ``source``.
- ``unlabelled.jsonl``: the pairs that got no label, with ``reason`` "unparseable"
  (no answer could be read from the judge; see ``unparsed`` for what it wrote), "too
  long for the judge" (the prompt did not fit the judge's context even with its sample
  shortened, see :mod:`.fit`), "refused: ..." (the server refused a request with a 4xx
  it would repeat) or "failed: ..." (a request failed after all retries). They are
  never guessed and never written to ``preferences.jsonl``.
- ``summary.json``: counts, order-flip rate and position bias, label methods,
  unparseable count, shortened prompts, requests, retries, cache hits, seconds.
- ``judge_cache.sqlite``: every finished judge request. Re-running the same command
  after a crash or Ctrl-C resumes: finished judgements come from the cache, free.

A run where some pair *failed* is not complete: the command writes the two files,
leaves out ``summary.json`` and exits with an error saying how many failed; running
the same command again asks the judge only for those (the cache holds the rest). So
is a run where the judge was asked but labelled no pair at all (unparseable or too
long): it writes the two files and fails with what to change.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from rlxf.data.records import Preference
from rlxf.errors import ConfigError, DataError, RlxfError
from rlxf.feedback.ai.backends import JudgeConfig, make_judge
from rlxf.feedback.ai.judge import Judge, JudgeRequestError
from rlxf.feedback.ai.labeller import JudgeSettings, PairJudgement, check_template_fits, judge_pairs
from rlxf.feedback.ai.scoring import mean
from rlxf.runs import Run, Timer

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class Config:
    """``rlxf label``: AI preference labels for answer pairs."""

    out: str
    """Run directory (preferences.jsonl, unlabelled.jsonl, summary.json, judge_cache.sqlite)."""
    data: str
    """Pairs to label: any preference file (chosen/rejected read as unlabelled A/B) or {prompt, answers} rows."""
    judge: JudgeConfig
    """The judge model and its backend."""
    split: str | None = None
    """Split to read from a saved HF DatasetDict."""
    skip_bad_rows: bool = False
    """Skip malformed input rows (counted) instead of stopping at the first one."""
    limit: int | None = None
    """Label only the first this many pairs (a cheap trial run): the file is read no further, so a bad row
    after them does not stop it."""
    template: str = "helpful"
    """Labelling prompt: a built-in (summarize, helpful, harmless, tinyworld) or a YAML file path."""
    constitution: str | None = None
    """Sample one principle per pair into the preamble: 'default' or a YAML file; null: none."""
    both_orders: bool = True
    """Judge each pair in both orders and average (removes position bias; twice the judge calls)."""
    require_both_orders: bool = True
    """With both_orders, leave a pair unlabelled unless both orders gave a readable answer."""
    cot: bool = False
    """Chain-of-thought: the judge writes a rationale before the answer is scored."""
    samples: int = 1
    """Rationales per prompt with cot (self-consistency: their distributions are averaged)."""
    temperature: float = 0.0
    """Sampling temperature of rationales (0 = greedy; samples > 1 needs > 0)."""
    rationale_max_tokens: int = 128
    """Longest rationale, in tokens."""
    chunk_size: int = 64
    """Pairs sent to the judge per batch (progress and failure accounting happen per chunk)."""
    max_failed_pairs: int = 20
    """Stop when more pairs than this failed after all retries (the server is likely down)."""
    cache: str | None = None
    """SQLite cache of judge requests; null: OUT/judge_cache.sqlite. Share one to reuse judgements across runs."""
    seed: int = 0
    """Seed for principle choice and rationale sampling."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"samples must be ≥ 1, got {self.samples}")
        if self.samples > 1 and not self.cot:
            raise ConfigError("samples > 1 (self-consistency) samples rationales; set cot=true")
        if self.samples > 1 and self.temperature <= 0:
            raise ConfigError("samples > 1 at temperature 0 would repeat one rationale; set temperature > 0 "
                              "(the RLAIF paper uses 1.0)")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.chunk_size < 1 or self.rationale_max_tokens < 1 or self.max_failed_pairs < 0:
            raise ConfigError("chunk_size and rationale_max_tokens must be ≥ 1, max_failed_pairs ≥ 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be ≥ 1 or null, got {self.limit}")


@dataclass(frozen=True)
class Pair:
    """Two answers to one prompt, not yet labelled. ``prompt`` is text or a message tuple."""

    prompt: object
    a: str
    b: str
    source: str = ""


def run(cfg: Config) -> dict:
    """Label ``cfg.data``; resume from the cache if ``cfg.out`` holds an unfinished run."""
    timer = Timer()
    pairs, skipped = read_pairs(cfg.data, split=cfg.split, skip_bad=cfg.skip_bad_rows, limit=cfg.limit)
    settings = settings_of(cfg)  # templates and constitution load (and fail) before any work
    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        log.info("%s is already complete; delete it to label again", run_dir.out)
        return run_dir.summary()
    judge = make_judge(cfg.judge, cfg.cache or run_dir.out / "judge_cache.sqlite")
    try:
        results = label_all(judge, pairs, settings, chunk_size=cfg.chunk_size,
                            max_failed=cfg.max_failed_pairs, progress=cfg.progress)
    except IncompleteJudging as err:  # what did finish is written; no summary: the run is not complete
        write_results(run_dir.out, pairs, err.results)
        raise
    write_results(run_dir.out, pairs, results)
    check_some_labelled(results, f"{run_dir.out / 'unlabelled.jsonl'} holds what it wrote (field 'unparsed')")
    summary = {"command": "label", "input": cfg.data, "skipped_rows": skipped, "judge": judge.identity,
               "template": cfg.template, **label_summary(results), **judge_stats(judge),
               "seconds": timer.elapsed(), "preferences": str(run_dir.out / "preferences.jsonl")}
    run_dir.write_summary(summary)
    flips = "not measured" if summary["flip_rate"] is None else f"{summary['flip_rate']:.1%}"
    log.info("labelled %d of %d pairs (%d unparseable, %d too long for the judge, %d refused); order flips %s",
             summary["labelled"], summary["pairs"], summary["unparseable_pairs"], summary["too_long_pairs"],
             summary["refused_pairs"], flips)
    return summary


def settings_of(cfg: Config) -> JudgeSettings:
    """The :class:`JudgeSettings` a label config describes (templates and constitution loaded)."""
    from rlxf.feedback.ai.constitution import load_constitution
    from rlxf.feedback.ai.templates import load_template

    return JudgeSettings(template=load_template(cfg.template), both_orders=cfg.both_orders,
                         require_both_orders=cfg.require_both_orders, cot=cfg.cot, samples=cfg.samples,
                         temperature=cfg.temperature, rationale_max_tokens=cfg.rationale_max_tokens,
                         constitution=load_constitution(cfg.constitution) if cfg.constitution else None,
                         seed=cfg.seed)


# --- input ---------------------------------------------------------------------------------

def read_pairs(path: str, *, split: str | None = None, skip_bad: bool = False,
               limit: int | None = None) -> tuple[list[Pair], int]:
    """The pairs to label and the number of skipped bad rows (see the module docstring);
    with ``limit``, the first that many pairs, reading no further rows than they take.

    A pair with an empty answer is a bad row, as ``rlxf reward`` would refuse its label
    (Anthropic HH has a few: the labeller preferred saying nothing)."""
    from rlxf.data.readers import iter_rows

    # the first readable row decides the file's shape; bad rows before it are reported as the loaders would
    first, first_error = None, None
    for _, row in iter_rows(path, split=split):  # a dict, or the DataError of a row that is not one
        if isinstance(row, dict):
            first = row
            break
        if not skip_bad:
            raise row
        first_error = first_error or row
    if first is None:
        raise first_error or DataError("holds no rows", path=str(path))
    if "answers" in first:
        pairs, skipped = _answer_lists(path, split, skip_bad, limit)
    else:
        pairs, skipped = _preference_pairs(path, split, skip_bad, limit)
    if not pairs:
        raise DataError("holds no pairs to label", path=str(path))
    return pairs, skipped


def _preference_pairs(path: str, split: str | None, skip_bad: bool, limit: int | None) -> tuple[list[Pair], int]:
    """Any :func:`rlxf.data.load_preferences` file's pairs, as unlabelled (A, B)."""
    prefs, skipped = read_preferences(path, split=split, skip_bad=skip_bad, limit=limit)
    return [Pair(p.prompt, p.chosen, p.rejected, p.source) for p in prefs], skipped


def read_preferences(path: str, *, split: str | None = None, skip_bad: bool = False,
                     limit: int | None = None) -> tuple[list[Preference], int]:
    """A :func:`rlxf.data.load_preferences` file's rows (labels kept) and the number of
    skipped bad rows, where a row with an empty answer is bad too; with ``limit``, the
    first that many pairs. ``rlxf label`` and ``rlxf label-eval`` both read their pairs
    through here, so they refuse the same rows."""
    from rlxf.data.formats import load_preferences, nonempty_answers

    loaded = load_preferences(path, split=split, skip_bad=skip_bad, limit=limit, check=nonempty_answers,
                              skip_key="skip_bad_rows")
    return list(loaded), loaded.skipped


def _answer_lists(path: str, split: str | None, skip_bad: bool, limit: int | None) -> tuple[list[Pair], int]:
    """Rows ``{"prompt", "answers": [K >= 2 different answers]}`` -> all C(K, 2) pairs;
    with ``limit``, rows are read until that many pairs are in."""
    from rlxf.data.readers import iter_rows

    pairs, skipped = [], 0
    for line, row in iter_rows(path, split=split):
        try:
            if isinstance(row, DataError):
                raise row
            pairs += _row_pairs(row, f"{path}:{line}", path, line)
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
        if limit is not None and len(pairs) >= limit:
            break
    return pairs[:limit], skipped


def _row_pairs(row: dict, source: str, path: str, line: int) -> list[Pair]:
    prompt, answers = row.get("prompt"), row.get("answers")
    if not isinstance(prompt, (str, list)) or not prompt:
        raise DataError("must be text or a list of {role, content} messages", path=path, line=line, field="prompt")
    if isinstance(prompt, list):
        prompt = tuple(prompt)
    if not isinstance(answers, list) or len(answers) < 2:
        raise DataError("must be a list of at least two answers", path=path, line=line, field="answers")
    for i, a in enumerate(answers):
        if not isinstance(a, str):
            raise DataError(f"must be text, got {type(a).__name__}", path=path, line=line, field=f"answers[{i}]")
        if not a.strip():
            raise DataError("is empty; an answer needs some text", path=path, line=line, field=f"answers[{i}]")
    if len({a.strip() for a in answers}) != len(answers):
        raise DataError("has identical answers; each answer must appear once", path=path, line=line,
                        field="answers")
    return [Pair(prompt, a, b, source) for a, b in combinations(answers, 2)]


# --- judging ------------------------------------------------------------------------------

class IncompleteJudging(RlxfError):
    """Some pairs failed after all retries. ``results`` holds every pair's outcome (as
    :func:`label_all` returns them), so what did finish can still be written out."""

    def __init__(self, results: list, failed: int, last: str) -> None:
        super().__init__(f"{failed} of {len(results)} pairs failed after all retries (last: {last}); the run is "
                         "not complete. Re-run the same command to retry only those: the judge cache keeps the "
                         "finished judgements")
        self.results = results


def label_all(judge: Judge, pairs: Sequence[Pair], settings: JudgeSettings, *, chunk_size: int,
              max_failed: int, progress: bool) -> list[PairJudgement | str]:
    """A :class:`PairJudgement` per pair, or the error of a pair whose requests did not succeed:
    ``"refused: ..."`` (the server will repeat its 4xx; the pair stays unlabelled) or
    ``"failed: ..."`` (retries ran out). Raises :class:`IncompleteJudging` at the end when
    any pair failed, and stops early when more than ``max_failed`` were refused or failed.

    Chunks go to the judge whole; when a chunk fails, its pairs are redone one by one, so
    one bad pair costs only itself: the cache serves what already finished, and the
    backend does not send again a request that already failed for good in this run.
    """
    from rlxf.feedback.ai.judge import prompt_room
    from rlxf.feedback.ai.templates import context_text
    from rlxf.progress import progress as bar

    check_template_fits(judge, settings)  # before the progress bar: a template too long fails every pair
    results: list[PairJudgement | str] = []
    failed = 0
    for start in bar(range(0, len(pairs), chunk_size), desc="label", total=-(-len(pairs) // chunk_size),
                     enabled=progress):
        chunk = [(context_text(p.prompt), p.a, p.b) for p in pairs[start:start + chunk_size]]
        try:
            results += judge_pairs(judge, chunk, settings)
            continue
        except JudgeRequestError as err:
            log.warning("a judge request failed (%s); judging this chunk pair by pair", err)
        for triple in chunk:
            try:
                results += judge_pairs(judge, [triple], settings)
            except JudgeRequestError as err:
                failed += 1
                results.append(f"{'refused' if err.permanent else 'failed'}: {err}")
                if failed > max_failed:
                    raise RlxfError(f"{failed} pairs failed or were refused (last: {err}); is the judge "
                                    "server up? Finished judgements are cached: re-run to resume") from None
    judged = [r for r in results if isinstance(r, PairJudgement)]
    shortened = sum(r.shortened for r in judged)
    if shortened:  # only a judge that knows its context length shortens, so it has a room
        log.warning("%d judge prompts were longer than the judge's %d positions: their sample was shortened "
                    "to fit (the conversation from its start, then the answers from their end); %d pairs could "
                    "not fit even so and stay unlabelled", shortened, prompt_room(judge).positions,
                    sum(r.prob_a is None and r.too_long for r in judged))
    failures = [r for r in results if isinstance(r, str) and r.startswith("failed")]
    if failures:
        raise IncompleteJudging(results, len(failures), failures[-1].removeprefix("failed: "))
    return results


class NothingLabelled(RlxfError):
    """The judge was asked about pairs but labelled none of them: it does not follow the
    template, or no prompt fit its context. A summary would mark the run complete, and the
    next stage would find no labels; the command fails instead."""


def check_some_labelled(results: Sequence[PairJudgement | str], where_unparsed: str) -> None:
    """Raise :class:`NothingLabelled` when pairs were judged but none got a label;
    ``where_unparsed`` says which file holds what the judge wrote."""
    s = label_summary(results)
    judged = [r for r in results if isinstance(r, PairJudgement)]
    refused = [r for r in results if isinstance(r, str) and r.startswith("refused")]
    if s["labelled"] or not (judged or refused):
        return
    why = []
    if refused:
        why.append(f"{len(refused)} refused by the judge server (last: {refused[-1].removeprefix('refused: ')})")
    if s["unparseable_pairs"]:
        one_order = sum(r.p_first_ab is not None or r.p_first_ba is not None for r in judged)
        why.append(f"{s['unparseable_pairs']} unparseable: no answer \"1\" or \"2\" could be read from the judge; "
                   f"{where_unparsed}. Try another template, chain-of-thought the other way (cot=true or "
                   "cot=false), or a judge model that follows the template (an instruction-tuned one)"
                   + (f"; {one_order} pairs were read in one order only (require_both_orders=false would keep "
                      "them, with that order's position bias)" if one_order else ""))
    if s["too_long_pairs"]:
        why.append(f"{s['too_long_pairs']} too long for the judge even shortened: use a judge with a longer "
                   "context, or a shorter template or constitution")
    raise NothingLabelled(f"the judge labelled none of the {len(judged) + len(refused)} pairs it was asked about: "
                          + "; ".join(why) + ". The run is not complete (no summary.json); run again with "
                          "a new out=DIR after changing the settings")


def label_summary(results: Sequence[PairJudgement | str]) -> dict:
    """Counts and bias statistics of a labelling run (the keys of summary.json)."""
    judged = [r for r in results if isinstance(r, PairJudgement)]
    labelled = [r for r in judged if r.prob_a is not None]
    methods = Counter(m for r in judged for m in r.methods)
    checked = [r for r in judged if r.flipped is not None]
    flips = [r for r in checked if r.flipped]
    p_first = [p for r in judged for p in (r.p_first_ab, r.p_first_ba) if p is not None]
    mean_first = mean(p_first) if p_first else None
    too_long = sum(r.prob_a is None and r.too_long for r in judged)
    return {
        "pairs": len(results),
        "labelled": len(labelled),
        "unparseable_pairs": len(judged) - len(labelled) - too_long,
        "too_long_pairs": too_long,
        "refused_pairs": sum(isinstance(r, str) and r.startswith("refused") for r in results),
        "failed_pairs": sum(isinstance(r, str) and r.startswith("failed") for r in results),
        "judgements": sum(methods.values()),
        "unparseable_judgements": methods["unparseable"],
        "shortened_prompts": sum(r.shortened for r in judged),
        "cut_rationales": sum(r.cut_rationales for r in judged),
        "label_methods": dict(methods),
        "flip_rate": len(flips) / len(checked) if checked else None,
        "flips_to_first": sum(r.p_first_ab > 0.5 for r in flips),
        "flips_to_second": sum(r.p_first_ab < 0.5 for r in flips),
        "mean_prob_first_position": mean_first,
        "favoured_position": None if mean_first is None else
        ("first" if mean_first > 0.5 else "second" if mean_first < 0.5 else "neither"),
        "mean_confidence": mean([max(r.prob_a, 1 - r.prob_a) for r in labelled]) if labelled else None,
        "prob_a_mean": mean([r.prob_a for r in labelled]) if labelled else None,
    }


def judge_stats(judge: Judge) -> dict:
    """Cache hits (judge calls a re-run got for free), misses (calls actually made; for an
    HTTP judge each is one request, whatever its retries) and the backend's own counters."""
    stats = judge.stats()
    return {"cache_hits": stats.get("cache_hits", 0), "cache_misses": stats.get("cache_misses", 0),
            "retries": stats.get("retries", 0), "judge_stats": stats}


# --- output -------------------------------------------------------------------------------

def preference_row(pair: Pair, r: PairJudgement) -> dict:
    """The ``preferences.jsonl`` row of a labelled pair: chosen = the judge's pick."""
    a_wins = r.prob_a >= 0.5
    row = {"prompt": plain_prompt(pair.prompt), "chosen": pair.a if a_wins else pair.b,
           "rejected": pair.b if a_wins else pair.a, "prob_chosen": r.prob_a if a_wins else 1.0 - r.prob_a,
           "p_first_ab": r.p_first_ab, "p_first_ba": r.p_first_ba, "flipped": r.flipped,
           "principle": r.principle, "source": pair.source}
    if r.rationales:
        row["rationales"] = list(r.rationales)
    return row


def write_results(out: Path, pairs: Sequence[Pair], results: Sequence[PairJudgement | str]) -> tuple[int, int]:
    """Write preferences.jsonl and unlabelled.jsonl; returns their row counts."""
    from rlxf.data.readers import write_jsonl

    labelled, unlabelled = [], []
    for pair, r in zip(pairs, results, strict=True):
        if isinstance(r, PairJudgement) and r.prob_a is not None:
            labelled.append(preference_row(pair, r))
        else:
            reason = r if isinstance(r, str) else r.problem
            unlabelled.append({"prompt": plain_prompt(pair.prompt), "answer_a": pair.a, "answer_b": pair.b,
                               "reason": reason, "source": pair.source,
                               "unparsed": list(r.unparsed) if isinstance(r, PairJudgement) else []})
    write_jsonl(Path(out) / "preferences.jsonl", labelled)
    write_jsonl(Path(out) / "unlabelled.jsonl", unlabelled)
    return len(labelled), len(unlabelled)


def plain_prompt(prompt: object) -> object:
    return [dict(m) for m in prompt] if isinstance(prompt, tuple) else prompt
