"""AutoSxS: an AI judge compares two models' answers on an eval set; win rates with intervals.

    rlxf autosxs model_a=runs/ppo/final model_b=runs/sft/final prompts=heldout.jsonl \\
        judge.model=path/to/judge template=helpful name_a=ppo name_b=sft out=runs/autosxs
    rlxf autosxs data=answers.jsonl column_a=ppo column_b=sft human_column=human \\
        judge.backend=openai judge.model=... judge.base_url=http://localhost:8000/v1 out=runs/autosxs

The answers come from two models or a file, exactly as in ``rlxf sxs``; the judge is
asked exactly as ``rlxf label`` asks it (same keys: ``judge.*``, ``template``,
``both_orders``, ``cot``, ``samples``, ``constitution``, ..., same cache and resume),
through :func:`rlxf.feedback.ai.labeller.judge_pairs`. Per pair the judge gives
P(A better), averaged over both orders (A shown first, then B shown first), which
removes the judge's position bias (RLAIF, Lee et al. 2023, §2.1.1).

Per pair (``judgments.csv`` and ``judgments.jsonl``): ``choice`` is "A", "B" or
"tie" (P(A) within ``tie_margin`` of 0.5, or, with the default ``order_flips=tie``,
a choice that flipped with the order: the judge picked the same position both times),
empty when the judge gave no readable answer; ``confidence`` is the judge's
probability of its choice, max(P(A), 1 - P(A)); ``explanation`` is the chain-of-thought
rationale (with ``cot=true``; empty otherwise), for each order the judge saw.

Win rate (``summary.json``): A's wins plus half its ties, over the pairs the judge
decided, with a Wilson score interval (Wilson 1927; :func:`rlxf.evaluate.sxs.wilson_interval`).
Counting a tie as half a win makes the count a non-integer; the interval treats it as
a binomial count, which is slightly conservative (ties make the outcome less variable
than a coin). With
``human_column``, the judge is also checked against the humans' choices with
:mod:`rlxf.evaluate.agreement` (positive class: "A preferred"; pairs either side
called a tie are left out), and the humans' own win rate is given beside the judge's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from rlxf.errors import ConfigError, DataError
from rlxf.evaluate.sxs import AnswersConfig, collect_answers, win_rate
from rlxf.feedback.ai import label
from rlxf.feedback.ai.judge import Judge
from rlxf.feedback.ai.labeller import JudgeSettings, PairJudgement
from rlxf.runs import Run, Timer

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class Config(AnswersConfig, label.Config):
    """``rlxf autosxs``: an AI judge's side-by-side verdicts on two models, with win rates."""

    out: str
    """Run directory (judgments.csv, judgments.jsonl, summary.json, judge_cache.sqlite)."""
    human_column: str | None = None
    """Column of data with the humans' choice per row: "A", "B", "tie" (any case) or name_a/name_b; null: none."""
    tie_margin: float = 0.0
    """Call the pair a tie when the judge's P(A) is within this of 0.5 (0: only exactly 0.5)."""
    order_flips: Literal["tie", "average"] = "tie"
    """A pair whose choice flips with the order the answers are shown in (the judge picked the same
    position both times): 'tie', since its verdict followed the position, not the answers (as MT-Bench
    counts such judgements); or 'average', P(A) averaged over both orders decides (RLAIF's soft labels)."""
    confidence_level: float = 0.95
    """Level of the Wilson confidence interval of the win rates."""

    def validate(self) -> None:
        label.Config.validate(self)
        AnswersConfig.validate(self)
        if self.human_column is not None and self.data is None:
            raise ConfigError("human_column needs data=FILE holding that column")
        if not 0 <= self.tie_margin < 0.5:
            raise ConfigError(f"tie_margin must be in [0, 0.5), got {self.tie_margin}")
        if not 0 < self.confidence_level < 1:
            raise ConfigError(f"confidence_level must be in (0, 1), got {self.confidence_level}")


@dataclass
class AutoSxS:
    """The judgments (a pandas DataFrame, one row per pair) and the summary numbers."""

    judgments: object
    summary: dict
    results: list = field(default_factory=list)
    """Each pair's :class:`PairJudgement`, or the error of a pair the judge was not asked about."""


def run(cfg: Config) -> dict:
    from rlxf.feedback.ai.backends import make_judge
    from rlxf.feedback.ai.labeller import check_template_fits
    from rlxf.models.loading import checkpoint

    settings = label.settings_of(cfg)  # templates and constitution load (and fail) before any work
    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        log.info("%s is already complete; delete it to judge again", run_dir.out)
        return run_dir.summary()
    timer = Timer()
    for path in (cfg.model_a, cfg.model_b) if cfg.data is None else ():
        checkpoint(path, "model")  # both exist before the judge loads
    # the judge loads, and its template is checked to fit it, before any answer is sampled
    judge = make_judge(cfg.judge, cfg.cache or run_dir.out / "judge_cache.sqlite")
    check_template_fits(judge, settings)
    answers = collect_answers(cfg, extra_columns=[cfg.human_column] if cfg.human_column else [], store=run_dir.out)
    human = None
    if cfg.human_column:
        human = [parse_human(v, cfg.name_a, cfg.name_b, where=(answers.source, line, cfg.human_column))
                 for v, line in zip(answers.extra[cfg.human_column], answers.lines)]
    result = judge_side_by_side(judge, answers.prompts, answers.a, answers.b, settings, human=human,
                                tie_margin=cfg.tie_margin, order_flips=cfg.order_flips, level=cfg.confidence_level,
                                chunk_size=cfg.chunk_size, max_failed=cfg.max_failed_pairs, progress=cfg.progress)
    frame = result.judgments
    frame.to_csv(run_dir.out / "judgments.csv", index=False)
    frame.to_json(run_dir.out / "judgments.jsonl", orient="records", lines=True, force_ascii=False)
    # a judge that decided nothing leaves the run incomplete, as in rlxf label
    label.check_some_labelled(result.results, f"{run_dir.out / 'judgments.jsonl'}'s error column says why")
    summary = {"command": "autosxs", "source": answers.source, "skipped_rows": answers.skipped,
               "judge": judge.identity, "template": cfg.template,
               "name_a": cfg.name_a, "name_b": cfg.name_b, **result.summary,
               "judgments": str(run_dir.out / "judgments.csv"), "seconds": timer.elapsed()}
    run_dir.write_summary(summary)
    _print_summary(summary)
    return summary


def judge_side_by_side(judge: Judge, prompts: Sequence, answers_a: Sequence[str], answers_b: Sequence[str],
                       settings: JudgeSettings, *, human: Sequence[str | None] | None = None,
                       tie_margin: float = 0.0, order_flips: str = "tie", level: float = 0.95, chunk_size: int = 64,
                       max_failed: int = 20, progress: bool = False) -> AutoSxS:
    """Judge every (prompt, A, B) and summarise; ``human`` holds "A"/"B"/"tie"/None per pair;
    ``order_flips``: what a choice that flips with the order is ("tie" or "average", see Config).

    Columns of the judgments: prompt, answer_a, answer_b, choice, confidence, prob_a,
    p_first_ab, p_first_ba, flipped, explanation, error (why a pair has no choice),
    and human when given.
    """
    import pandas as pd

    from rlxf.feedback.ai.templates import context_text

    if not len(prompts) == len(answers_a) == len(answers_b) or (human is not None and len(human) != len(prompts)):
        raise ValueError("prompts, answers_a, answers_b (and human) must have the same length")
    pairs = [label.Pair(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b)]
    results = label.label_all(judge, pairs, settings, chunk_size=chunk_size, max_failed=max_failed,
                              progress=progress)
    rows = []
    for pair, r in zip(pairs, results):
        judged = isinstance(r, PairJudgement)
        prob_a = r.prob_a if judged else None
        rows.append({
            "prompt": pair.prompt if isinstance(pair.prompt, str) else context_text(pair.prompt),
            "answer_a": pair.a, "answer_b": pair.b,
            "choice": "tie" if judged and order_flips == "tie" and r.flipped else choice_of(prob_a, tie_margin),
            "confidence": None if prob_a is None else max(prob_a, 1.0 - prob_a),
            "prob_a": prob_a,
            "p_first_ab": r.p_first_ab if judged else None, "p_first_ba": r.p_first_ba if judged else None,
            "flipped": r.flipped if judged else None,
            "explanation": explanation(r, settings) if judged else "",
            "error": "" if prob_a is not None else (r if isinstance(r, str) else r.problem),
        })
    frame = pd.DataFrame(rows)
    if human is not None:
        frame["human"] = list(human)
    summary = summarise(frame, level=level)
    stats = label.label_summary(results)
    summary["judging"] = {k: stats[k] for k in ("flip_rate", "favoured_position", "mean_prob_first_position",
                                                "unparseable_pairs", "too_long_pairs", "refused_pairs",
                                                "failed_pairs", "shortened_prompts", "label_methods")}
    summary["judging"].update(label.judge_stats(judge))
    flip_rate = summary["judging"]["flip_rate"]
    if flip_rate is not None and flip_rate > 0.5:
        log.warning("autosxs: the judge picked the same position in both orders on %.0f%% of the pairs: its verdicts "
                    "follow where an answer is shown more than what it says%s", 100 * flip_rate,
                    " (those pairs count as ties)" if order_flips == "tie" else
                    "; with order_flips=average its win rate says little")
    return AutoSxS(frame, summary, list(results))


def choice_of(prob_a: float | None, tie_margin: float = 0.0) -> str | None:
    """"A", "B" or "tie" from the judge's P(A); None when the judge gave no answer."""
    if prob_a is None:
        return None
    if abs(prob_a - 0.5) <= tie_margin:
        return "tie"
    return "A" if prob_a > 0.5 else "B"


def explanation(r: PairJudgement, settings: JudgeSettings) -> str:
    """The rationales of a chain-of-thought judgement, labelled with the order the judge saw
    (its "Response 1" is A in the first order and B in the second); "" without CoT."""
    if not r.rationales:
        return ""
    orders = ["A shown first", "B shown first"] if settings.both_orders else ["A shown first"]
    if len(orders) == 2 and len(r.rationales) < 2 * settings.samples:  # one order was too long to ask
        orders = ["B shown first"] if r.p_first_ab is None and r.p_first_ba is not None else ["A shown first"]
    per_order = len(r.rationales) // len(orders)
    parts = []
    for i, name in enumerate(orders):
        for text in r.rationales[i * per_order:(i + 1) * per_order]:
            parts.append(f"[{name}] {text.strip()}")
    return "\n".join(parts)


def parse_human(value, name_a: str = "A", name_b: str = "B", *, where: tuple = ("", None, None)) -> str | None:
    """A human choice cell as "A", "B", "tie" or None (empty: not labelled)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        for choice, names in (("A", {"a", name_a.lower()}), ("B", {"b", name_b.lower()}), ("tie", {"tie"})):
            if text in names:
                return choice
    path, line, column = where
    raise DataError(f"must be 'A', 'B', 'tie', '{name_a}' or '{name_b}', got {value!r}", path=path or None,
                    line=line, field=column)


# ----------------------------------------------------------------------------- numbers

def summarise(frame, *, level: float = 0.95) -> dict:
    """Counts, both win rates and mean confidence of a judgments table; with a ``human``
    column also the humans' win rate and the judge-vs-human agreement report."""
    from rlxf.evaluate.agreement import binary_report

    choices = [c if isinstance(c, str) else None for c in frame["choice"]]
    decided = [c for c in choices if c is not None]
    confidence = [float(v) for v, c in zip(frame["confidence"], choices) if c is not None]
    out = {
        "pairs": len(frame), "decided": len(decided), "no_answer": len(frame) - len(decided),
        "wins_a": decided.count("A"), "wins_b": decided.count("B"), "ties": decided.count("tie"),
        "win_rate_a": asdict(win_rate(choices, "A", level)), "win_rate_b": asdict(win_rate(choices, "B", level)),
        "mean_confidence": sum(confidence) / len(confidence) if confidence else None,
    }
    if "human" in frame:
        humans = [h if isinstance(h, str) else None for h in frame["human"]]
        both = [(h, c) for h, c in zip(humans, choices) if h in ("A", "B") and c in ("A", "B")]
        out["human"] = {
            "labelled": sum(h is not None for h in humans),
            "win_rate_a": asdict(win_rate(humans, "A", level)),
            "compared": len(both),
            "positive_class": "A preferred",
            "agreement": binary_report([h == "A" for h, _ in both], [c == "A" for _, c in both]),
        }
    return out


def _print_summary(summary: dict) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    w = summary["win_rate_a"]
    if w["rate"] is None:
        console.print("autosxs: the judge decided no pair")
        return
    console.print(f"autosxs: {summary['name_a']} wins {w['rate']:.1%} against {summary['name_b']} "
                  f"({w['level']:.0%} Wilson interval {w['low']:.1%}–{w['high']:.1%}; {w['n']} pairs, "
                  f"{w['ties']} ties counted half)", highlight=False)
    if "human" in summary:
        a = summary["human"]["agreement"]
        console.print(f"judge vs humans on {a['n']} pairs: accuracy {_three(a['accuracy'])}, Cohen's kappa "
                      f"{_three(a['cohen_kappa'])} ({a['kappa_interpretation']})", highlight=False)


def _three(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
