"""Gold-oracle evaluation of a model on Tinyworld prompts.

Answers are *sampled* (temperature 1 by default), the way the policy acts during
RLHF, and each is scored by the gold oracle, with ``ended`` telling the oracle
whether the model closed its answer. Win rates count ties as half a win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlxf.tinyworld.oracle import score

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


def gold_totals(prompts: list[str], answers: list[str], ended: list[bool]) -> list[float]:
    """The gold oracle's total per answer, in the shape PPO's ``track`` and
    ``reward.function`` expect: ``rlxf.tinyworld.evaluate:gold_totals``."""
    return [score(p, a, e).total for p, a, e in zip(prompts, answers, ended)]
