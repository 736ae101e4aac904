"""Agreement between two raters of the same items: a judge and humans, or two judges.

Pure functions on plain sequences, tested against hand-computed tables in
``tests/test_ai_agreement.py``. For pairwise preferences rlxf takes "the first answer
(A) is preferred" as the *positive* class, so precision is "of the pairs where the
judge picked A, how often the humans did too", recall "of the pairs where the humans
picked A, how often the judge did too". Which answer is A is arbitrary, so a caller
should present answers in a random order (``rlxf label-eval`` does, with a seeded coin)
so that both classes occur.

Cohen's kappa (Cohen 1960) corrects percent agreement for the agreement two raters
would reach by chance with their own label frequencies; the verbal scale is Landis &
Koch (1977).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

# Landis & Koch (1977), Biometrics 33(1), Table p. 165: upper bound of each band.
LANDIS_KOCH = ((0.0, "poor"), (0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial"),
               (1.0, "almost perfect"))


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary comparison: ``tp`` = both positive, ``fp`` = predicted positive
    only, ``fn`` = truth positive only, ``tn`` = both negative."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def confusion(truth: Sequence[bool], predicted: Sequence[bool]) -> Confusion:
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    pairs = Counter(zip(map(bool, truth), map(bool, predicted)))
    return Confusion(tp=pairs[True, True], fp=pairs[False, True], fn=pairs[True, False], tn=pairs[False, False])


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def accuracy(c: Confusion) -> float:
    return _ratio(c.tp + c.tn, c.n)


def precision(c: Confusion) -> float:
    """tp / (tp + fp); NaN when nothing was predicted positive."""
    return _ratio(c.tp, c.tp + c.fp)


def recall(c: Confusion) -> float:
    """tp / (tp + fn); NaN when nothing is positive."""
    return _ratio(c.tp, c.tp + c.fn)


def f1(c: Confusion) -> float:
    """Harmonic mean of precision and recall = 2 tp / (2 tp + fp + fn); NaN when tp + fp + fn = 0."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' nominal labels of the same items::

        p_o = share of items with equal labels
        p_e = sum_k (share of a's labels that are k) * (share of b's labels that are k)
        kappa = (p_o - p_e) / (1 - p_e)

    NaN for no items, or when chance agreement is already 1 (both raters always give
    the same single label).
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels from the first rater but {len(b)} from the second")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan


def landis_koch(kappa: float) -> str:
    """The Landis & Koch (1977) word for a kappa: poor (< 0), slight (0-0.20), fair
    (0.21-0.40), moderate (0.41-0.60), substantial (0.61-0.80), almost perfect (0.81-1)."""
    if math.isnan(kappa):
        return "undefined"
    if kappa < 0:
        return "poor"
    for upper, word in LANDIS_KOCH[1:]:
        if kappa <= upper:
            return word
    return LANDIS_KOCH[-1][1]


def binary_report(truth: Sequence[bool], predicted: Sequence[bool]) -> dict:
    """Accuracy, precision, recall, F1, Cohen's kappa (+ Landis & Koch word) and the
    confusion counts, JSON-ready (undefined values are ``None``)."""
    c = confusion(truth, predicted)
    kappa = cohen_kappa(list(map(bool, truth)), list(map(bool, predicted)))
    values = {"accuracy": accuracy(c), "precision": precision(c), "recall": recall(c), "f1": f1(c),
              "cohen_kappa": kappa}
    return {"n": c.n, **{k: None if math.isnan(v) else v for k, v in values.items()},
            "kappa_interpretation": landis_koch(kappa), "confusion": asdict(c)}
