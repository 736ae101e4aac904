"""Simulated labellers: noisy people with tastes, choosing between answers.

A labeller's utility for an answer is its persona-weighted gold sub-scores, plus an
optional bonus per word (``length_bias``), and it chooses by Bradley-Terry
(Bradley & Terry 1952; the reward model of InstructGPT §3.5 assumes the same):

    P(a ≻ b) = σ((u_a − u_b) / temperature)

Rankings of K answers are Plackett-Luce draws (Luce 1959), sampled by sorting
``u / temperature + Gumbel noise``; for K = 2 this is exactly the Bradley-Terry
choice, because the difference of two standard Gumbels is standard logistic.

The personas' tastes correlate with the gold oracle but are not it, which leaves a
reward model learnt from them slack to exploit (Gao et al. 2022): "verbose" likes
longer answers, "helpfulness-first" forgives rudeness. The temperatures are
calibrated so that, on pairs of different answers drawn from the corpus answer mix
(:func:`rlxf.tinyworld.corpus.answer_pairs`), the default panel agrees with itself
on ~73% of pairs, as InstructGPT's labellers did (72.6 ± 1.5%, Ouyang et al. 2022
§5.1), and each labeller agrees with the gold order more often than with another
labeller. See :func:`agreement_report`.
"""

from __future__ import annotations

import math
import random
from itertools import combinations
from types import MappingProxyType
from typing import Mapping, Sequence

from ..data.records import Preference, Ranking
from .oracle import WEIGHTS, score
from .prompts import TaskPrompt

PERSONAS: Mapping[str, Mapping] = MappingProxyType({
    "balanced": MappingProxyType(dict(weights=WEIGHTS, length_bias=0.0)),
    "helpfulness-first": MappingProxyType(dict(
        weights={"helpful": 0.6, "honest": 0.2, "harmless": 0.1, "fluent": 0.1},
        length_bias=0.0)),
    "safety-first": MappingProxyType(dict(
        weights={"helpful": 0.3, "honest": 0.25, "harmless": 0.35, "fluent": 0.1},
        length_bias=0.0)),
    "stickler-for-fluency": MappingProxyType(dict(
        weights={"helpful": 0.3, "honest": 0.2, "harmless": 0.15, "fluent": 0.35},
        length_bias=0.0)),
    "verbose": MappingProxyType(dict(weights=WEIGHTS, length_bias=0.01)),
})
# Calibrated with tests/test_tinyworld.py::test_labeller_agreement (see its comment).
TEMPERATURE = 0.12


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def _text(prompt: str | TaskPrompt) -> str:
    return prompt.text if isinstance(prompt, TaskPrompt) else prompt


class Labeller:
    """A simulated labeller.

    ``weights`` maps gold sub-scores ("helpful", "honest", "harmless", "fluent") to
    how much this labeller cares about them; ``length_bias`` is utility per answer
    word; ``temperature`` is the Bradley-Terry noise scale (smaller = more careful).
    Choices draw from the labeller's own ``random.Random``, seeded by ``seed`` and
    ``name``, so a labeller is reproducible and two labellers are independent.
    ``ended`` arguments say, per answer, whether the model emitted its EOS token.
    """

    def __init__(self, name: str, weights: Mapping[str, float], temperature: float, seed: int,
                 length_bias: float = 0.0) -> None:
        unknown = set(weights) - set(WEIGHTS)
        if unknown:
            raise ValueError(f"unknown sub-scores {sorted(unknown)}; known: {list(WEIGHTS)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.name, self.weights = name, dict(weights)
        self.temperature, self.length_bias = float(temperature), float(length_bias)
        self._rng = random.Random(f"tinyworld/labeller/{seed}/{name}")

    def __repr__(self) -> str:
        return (f"Labeller({self.name!r}, weights={self.weights}, temperature={self.temperature}, "
                f"length_bias={self.length_bias})")

    def utility(self, prompt: str | TaskPrompt, answer: str, ended: bool = True) -> float:
        gold = score(_text(prompt), answer, ended)
        return (sum(w * getattr(gold, k) for k, w in self.weights.items())
                + self.length_bias * len(answer.split()))

    def prob(self, prompt: str | TaskPrompt, a: str, b: str,
             ended: tuple[bool, bool] = (True, True)) -> float:
        """P(this labeller prefers ``a`` to ``b``)."""
        diff = self.utility(prompt, a, ended[0]) - self.utility(prompt, b, ended[1])
        return _sigmoid(diff / self.temperature)

    def prefer(self, prompt: str | TaskPrompt, a: str, b: str,
               ended: tuple[bool, bool] = (True, True)) -> int:
        """0 if this labeller prefers ``a``, 1 if ``b`` (one Bradley-Terry draw)."""
        return 0 if self._rng.random() < self.prob(prompt, a, b, ended) else 1

    def rank(self, prompt: str | TaskPrompt, answers: Sequence[str],
             ended: Sequence[bool] | None = None) -> tuple[int, ...]:
        """Indices of ``answers`` from best to worst (one Plackett-Luce draw)."""
        ended = [True] * len(answers) if ended is None else list(ended)
        keys = []
        for answer, done in zip(answers, ended, strict=True):
            u = 1.0 - self._rng.random()  # in (0, 1]: log(u) is finite
            gumbel = -math.log(-math.log(u)) if u < 1.0 else math.inf
            keys.append(self.utility(prompt, answer, done) / self.temperature + gumbel)
        return tuple(sorted(range(len(answers)), key=lambda i: -keys[i]))

    def preference(self, prompt: str | TaskPrompt, a: str, b: str) -> Preference:
        """A hard-labelled :class:`Preference` from one choice between ``a`` and ``b``."""
        chosen, rejected = (a, b) if self.prefer(prompt, a, b) == 0 else (b, a)
        return Preference(_text(prompt), chosen, rejected, source=f"labeller:{self.name}")

    def ranking(self, prompt: str | TaskPrompt, answers: Sequence[str]) -> Ranking:
        """A :class:`Ranking` of ``answers`` from one Plackett-Luce draw."""
        return Ranking(_text(prompt), tuple(answers), self.rank(prompt, answers),
                       source=f"labeller:{self.name}")


def default_panel(seed: int, temperature: float = TEMPERATURE) -> list[Labeller]:
    """One labeller per persona in :data:`PERSONAS`, all at ``temperature``."""
    return [Labeller(name, p["weights"], temperature, seed, p["length_bias"])
            for name, p in PERSONAS.items()]


def agreement_report(pairs: Sequence[tuple[str, str, str]], panel: Sequence[Labeller],
                     seed: int) -> dict:
    """How often the panel agrees with itself and with the gold oracle.

    Each labeller chooses once per (prompt, a, b) pair, with draws from a
    ``random.Random(seed)`` of the report's own (the labellers' streams are left
    alone). Inter-labeller agreement is the mean, over all pairs of labellers, of the
    fraction of pairs on which their choices match, as InstructGPT measures it.
    Agreement with gold excludes pairs whose gold totals tie exactly (there is no
    gold order to agree with); ``n_gold_ties`` counts them. The ``*_expected`` values
    are the same quantities computed from the choice probabilities (no sampling noise).
    """
    if len(panel) < 2:
        raise ValueError("agreement needs at least two labellers")
    rng = random.Random(f"tinyworld/agreement/{seed}")
    probs = [[lab.prob(p, a, b) for p, a, b in pairs] for lab in panel]
    choices = [[0 if rng.random() < q else 1 for q in row] for row in probs]
    totals = [(score(p, a).total, score(p, b).total) for p, a, b in pairs]
    ordered = [i for i, (ga, gb) in enumerate(totals) if ga != gb]
    gold = {i: 0 if totals[i][0] > totals[i][1] else 1 for i in ordered}

    def mean(xs) -> float:
        xs = list(xs)
        return sum(xs) / len(xs) if xs else float("nan")

    lab_pairs = list(combinations(range(len(panel)), 2))
    inter = mean(mean(ci == cj for ci, cj in zip(choices[i], choices[j])) for i, j in lab_pairs)
    inter_exp = mean(mean(pi * pj + (1 - pi) * (1 - pj) for pi, pj in zip(probs[i], probs[j]))
                     for i, j in lab_pairs)
    per = {lab.name: mean(choices[k][i] == gold[i] for i in ordered)
           for k, lab in enumerate(panel)}
    per_exp = {lab.name: mean(probs[k][i] if gold[i] == 0 else 1 - probs[k][i] for i in ordered)
               for k, lab in enumerate(panel)}
    return {
        "n_pairs": len(pairs),
        "n_gold_ties": len(pairs) - len(ordered),
        "inter_labeller": inter,
        "labeller_vs_gold": mean(per.values()),
        "per_persona": per,
        "inter_labeller_expected": inter_exp,
        "labeller_vs_gold_expected": mean(per_exp.values()),
        "per_persona_expected": per_exp,
    }
