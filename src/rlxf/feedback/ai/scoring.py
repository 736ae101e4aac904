"""The arithmetic of AI labels: from a judge's log-probabilities to preferences and scores.

Pure functions over floats (no model, no torch), each tested against hand-worked values
in ``tests/test_ai_scoring.py``. The names follow Lee et al. 2023 (RLAIF, §2.1-2.2):

- A judge shown a pair answers "1" or "2"; the *preference distribution* is the
  softmax over the log-probabilities of those two answer tokens.
- *Position-bias mitigation*: the pair is judged in both orders (AB and BA) and the
  two distributions are averaged, after mapping positions back to answers.
- *Direct scoring* (d-RLAIF): the judge rates one answer 1-10, and the score is the
  probability-weighted mean rating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def logsumexp(values: Sequence[float]) -> float:
    """``log(sum(exp(v)))``, stable; ``-inf`` for no values or all ``-inf``."""
    top = max(values, default=-math.inf)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def softmax(logits: Sequence[float]) -> list[float]:
    """Probabilities proportional to ``exp(logits)``; raises if every logit is ``-inf``."""
    norm = logsumexp(logits)
    if norm == -math.inf:
        raise ValueError("softmax of all -inf: no choice has any probability")
    return [math.exp(v - norm) for v in logits]


def prob_first(logprob_1: float, logprob_2: float) -> float:
    """P(position 1 is better) = softmax over the answer log-probs ``(log p("1"), log p("2"))``.

    The two log-probs need not sum to one (the judge may put mass on other tokens);
    only their difference matters: ``σ(lp1 - lp2)``.
    """
    return softmax([logprob_1, logprob_2])[0]


def swap_average(p_first_ab: float, p_first_ba: float) -> float:
    """P(A is better) from the judge's P(position 1 wins) in order AB and in order BA.

    In order AB position 1 holds A; in order BA position 2 holds A, so A's probability
    there is ``1 - p_first_ba``. RLAIF §2.1.1 averages the two:
    ``P(A) = (p_first_ab + 1 - p_first_ba) / 2``. E.g. (0.8, 0.2) in AB and (0.3, 0.7)
    in BA give (0.8 + 0.7) / 2 = 0.75.
    """
    return (p_first_ab + (1.0 - p_first_ba)) / 2.0


def order_flipped(p_first_ab: float, p_first_ba: float) -> bool:
    """True when the judge picked the same *position*, not the same *answer*, in both orders.

    In order AB, P(first) > 0.5 picks A; in order BA, P(first) > 0.5 picks B. So the
    choice flips with the order exactly when both are on the same side of 0.5. A
    probability of exactly 0.5 is no choice and never counts as a flip.
    """
    return (p_first_ab - 0.5) * (p_first_ba - 0.5) > 0


@dataclass(frozen=True)
class ChoiceScore:
    """A judge's log-probability of one candidate continuation, and the tokens it used.

    ``logprob`` = log P(the continuation's tokens | prompt), the sum over its tokens;
    ``tokens`` identify the tokenization so that nested candidates (``"1"`` inside
    ``"10"``) can be told apart from separate ones (see :func:`exclusive_logprobs`).
    """

    logprob: float
    tokens: tuple


def exclusive_logprobs(scores: Sequence[ChoiceScore]) -> list[float]:
    """log P(the answer is *exactly* each candidate), not merely starts with it.

    When a candidate's tokens begin with another candidate's tokens (``"10"`` read as
    ``"1"`` + ``"0"``), P("1") counts every answer that starts with "1", "10" included.
    So P(exactly "1") = P("1") - P("10"): subtract the probabilities of the candidate's
    *minimal* extensions (those not extending another extension; deeper ones are inside
    them). When "10" is one token of its own, nothing nests and nothing is subtracted.
    """
    out = []
    for i, s in enumerate(scores):
        ext = [j for j, t in enumerate(scores) if j != i and _extends(t.tokens, s.tokens)]
        minimal = [j for j in ext if not any(k != j and _extends(scores[j].tokens, scores[k].tokens)
                                             for k in ext)]
        taken = logsumexp([scores[j].logprob for j in minimal])
        if taken == -math.inf:
            out.append(s.logprob)
        elif taken >= s.logprob:  # rounding: the extensions hold all of the mass
            out.append(-math.inf)
        else:
            out.append(s.logprob + math.log1p(-math.exp(taken - s.logprob)))
    return out


def _extends(longer: tuple, shorter: tuple) -> bool:
    return len(longer) > len(shorter) and longer[:len(shorter)] == shorter


def rating_distribution(scores: Sequence[ChoiceScore]) -> list[float]:
    """P(rating = k) over the candidates, from their exclusive log-probs, renormalised."""
    return softmax(exclusive_logprobs(scores))


def expected_rating(values: Sequence[float], probs: Sequence[float]) -> float:
    """The d-RLAIF score: ``sum_k value_k * P(k)`` (Lee et al. 2023, §2.2.2)."""
    if len(values) != len(probs):
        raise ValueError(f"{len(values)} values but {len(probs)} probabilities")
    return sum(v * p for v, p in zip(values, probs))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values (self-consistency over zero parsed samples)."""
    return sum(values) / len(values) if values else math.nan
