"""Check an AI judge against human labels on the same pairs: accuracy, F1, Cohen's kappa.

    rlxf label-eval data=human_pairs.jsonl out=runs/judge-check judge.model=path/to/judge

``data`` holds human-labelled pairs (any :func:`rlxf.data.load_preferences` shape;
``chosen`` is the humans' pick). Each pair is shown to the judge as answers A and B
in an order set by a seeded coin, so that "A preferred" -- the positive class of
:mod:`rlxf.evaluate.agreement` -- is true for about half the pairs and precision,
recall and kappa mean something. The judge is asked exactly as ``rlxf label`` asks it
(same keys: template, both_orders, cot, ...), with the same cache and resume.

Which pairs count: pairs the humans tied (``prob_chosen == 0.5``) have no human
choice and are left out (``human_ties``); pairs the judge left unlabelled (unparseable,
failed) are left out (``unlabelled``); pairs where the judge's P(A) is exactly 0.5 --
e.g. a text-only judge that picked the same position in both orders -- have no judge
choice and are left out (``judge_ties``); ``coverage`` is the share that remains.
When the judge labelled no pair at all, the run fails (no ``summary.json``), as ``rlxf label`` does.

Rows are read as ``rlxf label`` reads them: a pair with an empty answer (Anthropic HH
has a few) is a bad row, an error naming its file and line, or with
``skip_bad_rows=true`` skipped and counted in ``summary.json`` as ``skipped_rows``.

Output: ``judged.jsonl`` (per pair: both answers, the human and the judge choice,
P(A), and ``unparsed``: what the judge wrote where no answer could be read) and
``summary.json`` (the agreement report under ``agreement``, plus the
labelling statistics of ``rlxf label``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from rlxf.errors import DataError
from rlxf.feedback.ai import label
from rlxf.feedback.ai.labeller import PairJudgement
from rlxf.runs import Run, Timer

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class Config(label.Config):
    """``rlxf label-eval``: an AI judge's agreement with human labels."""

    out: str
    """Run directory (judged.jsonl, summary.json, judge_cache.sqlite, config.yaml)."""
    data: str
    """Human-labelled pairs (any preference file; chosen = the humans' pick)."""


def run(cfg: Config) -> dict:
    from rlxf.data.readers import write_jsonl
    from rlxf.evaluate.agreement import binary_report
    from rlxf.feedback.ai.backends import make_judge
    from rlxf.feedback.ai.scoring import mean

    timer = Timer()
    # read as rlxf label reads them: a pair with an empty answer is a bad row (skipped_rows)
    prefs, skipped = label.read_preferences(cfg.data, split=cfg.split, skip_bad=cfg.skip_bad_rows,
                                            limit=cfg.limit or None)
    if not prefs:
        raise DataError("holds no pairs to judge", path=str(cfg.data))
    settings = label.settings_of(cfg)
    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        log.info("%s is already complete; delete it to judge again", run_dir.out)
        return run_dir.summary()
    decided = [p for p in prefs if p.prob_chosen != 0.5]
    pairs, human_a = [], []
    for p in decided:
        a_is_chosen = random.Random("\x1f".join([f"label-eval/{cfg.seed}", str(p.prompt), p.chosen,
                                                 p.rejected])).random() < 0.5
        human_prefers_chosen = p.prob_chosen > 0.5
        a, b = (p.chosen, p.rejected) if a_is_chosen else (p.rejected, p.chosen)
        pairs.append(label.Pair(p.prompt, a, b, p.source))
        human_a.append(a_is_chosen == human_prefers_chosen)
    judge = make_judge(cfg.judge, cfg.cache or run_dir.out / "judge_cache.sqlite")
    results = label.label_all(judge, pairs, settings, chunk_size=cfg.chunk_size,
                              max_failed=cfg.max_failed_pairs, progress=cfg.progress)

    rows, truth, predicted, soft = [], [], [], []
    judge_ties = unlabelled = 0
    for pair, human, r in zip(pairs, human_a, results):
        prob_a = r.prob_a if isinstance(r, PairJudgement) else None
        rows.append({"prompt": label.plain_prompt(pair.prompt), "answer_a": pair.a, "answer_b": pair.b,
                     "human_prefers": "a" if human else "b", "judge_prob_a": prob_a,
                     "judge_prefers": None if prob_a is None or prob_a == 0.5 else "a" if prob_a > 0.5 else "b",
                     "source": pair.source,
                     "unparsed": list(r.unparsed) if isinstance(r, PairJudgement) else []})
        if prob_a is None:
            unlabelled += 1
            continue
        soft.append(prob_a if human else 1.0 - prob_a)
        if prob_a == 0.5:
            judge_ties += 1
            continue
        truth.append(human)
        predicted.append(prob_a > 0.5)
    write_jsonl(run_dir.out / "judged.jsonl", rows)
    label.check_some_labelled(results, f"{run_dir.out / 'judged.jsonl'} holds what it wrote (field 'unparsed')")
    report = binary_report(truth, predicted)
    summary = {
        "command": "label-eval", "input": cfg.data, "skipped_rows": skipped, "judge": judge.identity,
        "template": cfg.template,
        "positive_class": "answer A (shown first in judged.jsonl) preferred",
        "pairs": len(prefs), "human_ties": len(prefs) - len(decided), "unlabelled": unlabelled,
        "judge_ties": judge_ties, "evaluated": len(truth), "coverage": len(truth) / len(prefs) if prefs else None,
        "human_a_share": mean([float(h) for h in truth]) if truth else None,
        "mean_judge_prob_of_human_choice": mean(soft) if soft else None,
        "agreement": report,
        "labelling": {**label.label_summary(results), **label.judge_stats(judge)},
        "seconds": timer.elapsed(),
    }
    run_dir.write_summary(summary)
    log.info("judge vs humans on %d pairs: accuracy %s, kappa %s (%s)", len(truth), _three(report["accuracy"]),
             _three(report["cohen_kappa"]), report["kappa_interpretation"])
    return summary


def _three(value: float | None) -> str:
    """A statistic for a log line: 3 decimal places (summary.json keeps every digit)."""
    return "undefined" if value is None else f"{round(value, 3):g}"
