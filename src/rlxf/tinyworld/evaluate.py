"""Gold-oracle evaluation of a model on Tinyworld prompts.

Answers are *sampled* (temperature 1 by default), the way the policy acts during
RLHF, and each is scored by the gold oracle, with ``ended`` telling the oracle
whether the model closed its answer. Win rates count ties as half a win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlxf.tinyworld.oracle import WEIGHTS, score

SUBSCORES = ("helpful", "honest", "harmless", "fluent", "total")


@dataclass
class GoldReport:
    prompts: list[str]
    answers: list[str]
    ended: list[bool]
    scores: list[dict[str, float]] = field(default_factory=list)

    def mean(self, key: str = "total") -> float:
        return sum(s[key] for s in self.scores) / len(self.scores)

    def means(self) -> dict[str, float]:
        return {k: self.mean(k) for k in SUBSCORES}

    def totals(self) -> list[float]:
        return [s["total"] for s in self.scores]


def score_answers(prompts: list[str], answers: list[str], ended: list[bool]) -> GoldReport:
    report = GoldReport(list(prompts), list(answers), list(ended))
    report.scores = [score(p, a, e).as_dict() for p, a, e in zip(prompts, answers, ended)]
    return report


def gold_eval(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 48, temperature: float = 1.0,
              seed: int = 0, batch_size: int = 64, separator: str = " ", progress: bool = False) -> GoldReport:
    """Sample one answer per prompt and score it with the gold oracle."""
    from rlxf.models.generation import generate

    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                    seed=seed, batch_size=batch_size, separator=separator, progress=progress)
    return score_answers(prompts, [g.text for g in gens], [g.ended for g in gens])


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of prompts where ``a`` beats ``b``; ties count half."""
    if len(a) != len(b) or not a:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def win_rate_ceiling(prompts: list[str], totals: list[float]) -> float:
    """The highest gold win rate (ties half) any policy can reach over answers scoring ``totals``.

    Nothing scores above a prompt's reference answer, so where an answer already scores as
    well it can at best be tied (½), elsewhere beaten (1). A strong SFT model leaves little
    room: when it writes a best answer to 62% of the prompts, no policy can beat it on more
    than 69% of them.
    """
    from rlxf.tinyworld.prompts import parse_prompt

    if len(prompts) != len(totals) or not prompts:
        raise ValueError("win_rate_ceiling needs one total per prompt, and at least one prompt")
    best = [score(p, parse_prompt(p).reference, True).total for p in prompts]
    return sum(0.5 if t >= b else 1.0 for t, b in zip(totals, best)) / len(totals)


def gold_totals(prompts: list[str], answers: list[str], ended: list[bool]) -> list[float]:
    """The gold oracle's total per answer, in the shape PPO's ``track`` and
    ``reward.function`` expect: ``rlxf.tinyworld.evaluate:gold_totals``."""
    return [score(p, a, e).total for p, a, e in zip(prompts, answers, ended)]


GAP_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
"""Left edges of the gold-gap bins of :func:`reward_gold_accuracy` (the last bin runs to 1)."""


def reward_gold_accuracy(reward, pairs_file: str, *, by_task: bool = False, by_gap: bool = False,
                         by_aspect: bool = False) -> dict | None:
    """How often a reward model orders answer pairs as the gold oracle does.

    ``reward`` is a reward-model directory or a scorer ``f(prompts, answers, ended) ->
    scores``; ``pairs_file`` a ``pairs_*.jsonl`` of ``rlxf tinyworld preferences`` (its
    ``gold_chosen``/``gold_rejected`` and ``ended_*`` fields). Gold ties are left out;
    equal rewards count half. Returns ``{"accuracy", "pairs"}``, or None when every
    pair is a gold tie.

    Breakdowns, each ``{group: {"accuracy", "labels", "pairs"}}`` where ``labels`` is
    how often the labeller's choice (``chosen``) is gold's, the best a reward model
    that copied the labels could do:

    - ``by_task``: the prompt's task.
    - ``by_gap``: the gold difference ``|gold_chosen - gold_rejected|``, in bins with
      left edges :data:`GAP_EDGES` (``"0.10-0.20"``); labellers rarely get a large gap wrong.
    - ``by_aspect``: the gold sub-score that differs most between the two answers,
      weighted as in the total (``helpful``, ``honest``, ``harmless``, ``fluent``).
    """
    import json
    from pathlib import Path

    from rlxf.evaluate.sxs import reward_scorer

    rows = [json.loads(line) for line in Path(pairs_file).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    if not rows:
        return None
    scorer = reward_scorer(reward) if isinstance(reward, (str, Path)) else reward
    prompts = [r["prompt"] for r in rows]
    chosen = scorer(prompts, [r["chosen"] for r in rows], [r["ended_chosen"] for r in rows])
    rejected = scorer(prompts, [r["rejected"] for r in rows], [r["ended_rejected"] for r in rows])
    right = [0.5 if a == b else float((a > b) == (r["gold_chosen"] > r["gold_rejected"]))
             for a, b, r in zip(chosen, rejected, rows)]
    result = {"accuracy": sum(right) / len(right), "pairs": len(right)}
    groupings = {"by_task": (by_task, lambda r: r["task"]), "by_gap": (by_gap, _gap_bin),
                 "by_aspect": (by_aspect, _dominant_aspect)}
    for name, (wanted, group_of) in groupings.items():
        if wanted:
            result[name] = _grouped(rows, right, group_of)
    return result


def _grouped(rows: list[dict], right: list[float], group_of) -> dict[str, dict]:
    groups: dict[str, list[tuple[float, float]]] = {}
    for r, ok in zip(rows, right):
        groups.setdefault(group_of(r), []).append((ok, float(r["gold_chosen"] > r["gold_rejected"])))
    return {g: {"accuracy": sum(ok for ok, _ in v) / len(v), "labels": sum(lab for _, lab in v) / len(v),
                "pairs": len(v)} for g, v in sorted(groups.items())}


def _gap_bin(row: dict) -> str:
    import bisect

    edges = (*GAP_EDGES, 1.0)
    i = bisect.bisect_right(GAP_EDGES, abs(row["gold_chosen"] - row["gold_rejected"])) - 1
    return f"{edges[i]:.2f}-{edges[i + 1]:.2f}"


def _dominant_aspect(row: dict) -> str:
    a = score(row["prompt"], row["chosen"], row["ended_chosen"]).as_dict()
    b = score(row["prompt"], row["rejected"], row["ended_rejected"]).as_dict()
    return max(WEIGHTS, key=lambda k: abs(WEIGHTS[k] * (a[k] - b[k])))
