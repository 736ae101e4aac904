"""Inter-annotator agreement: pairwise percent agreement, Fleiss' kappa, Krippendorff's alpha.

An *item* is one thing several labellers judged, and each gives it a nominal
*category*. For annotation tasks, the items are answer pairs: a pairwise task is one
item whose category is the index of the better answer or ``"tie"``; a ranking of K
answers is C(K, 2) items (one per answer pair), each with the index of the answer ranked
higher. That makes rankings and pairs comparable on one scale. Skips are not judgments
and are left out.

The three numbers answer different questions: percent agreement is easy to read but
rises by chance (two coin-flipping labellers agree 50% of the time on a binary item);
Fleiss' kappa (Fleiss 1971) and Krippendorff's alpha (Krippendorff 2004, ch. 11) correct
for chance, alpha also for items judged by different numbers of labellers. InstructGPT
reports ~73% labeller-labeller agreement on pairs (Ouyang et al. 2022, §5.1).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations


def percent_agreement(items: Iterable[Sequence[Hashable]]) -> float:
    """Of all pairs of labels two different labellers gave the same item, the fraction
    that are equal (pooled over items). Items with fewer than two labels do not count.

    With ``c_uk`` = labels of category k on item u and ``m_u`` = labels on item u:
    ``sum_u sum_k c_uk (c_uk - 1) / sum_u m_u (m_u - 1)`` (ordered pairs above and below).
    NaN when no item has two labels.
    """
    agreeing = total = 0
    for labels in items:
        m = len(labels)
        agreeing += sum(c * (c - 1) for c in Counter(labels).values())
        total += m * (m - 1)
    return agreeing / total if total else math.nan


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an N x q table: ``counts[i][j]`` = raters who put item i in
    category j; every row sums to the same number of raters n >= 2 (Fleiss 1971)::

        P_i   = (sum_j n_ij^2 - n) / (n (n - 1))      agreement on item i
        P_bar = mean_i P_i
        p_j   = sum_i n_ij / (N n)                    share of category j
        P_e   = sum_j p_j^2                           agreement expected by chance
        kappa = (P_bar - P_e) / (1 - P_e)

    NaN when chance agreement is already perfect (every label in one category).
    """
    if not counts:
        return math.nan
    n = sum(counts[0])
    if n < 2 or any(sum(row) != n for row in counts):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters on every item; "
                         f"got row sums {sorted({sum(row) for row in counts})}")
    big_n = len(counts)
    p_bar = sum((sum(c * c for c in row) - n) / (n * (n - 1)) for row in counts) / big_n
    shares = [sum(column) / (big_n * n) for column in zip(*counts)]
    p_e = sum(p * p for p in shares)
    return (p_bar - p_e) / (1 - p_e) if p_e < 1 else math.nan


def krippendorff_alpha(items: Iterable[Sequence[Hashable]]) -> float:
    """Krippendorff's alpha for nominal categories; items may have different numbers of
    labels, and items with fewer than two are not pairable and dropped.

    ``alpha = 1 - D_o / D_e`` computed from the coincidence matrix (Krippendorff 2004,
    §11.3). For nominal data it reduces to::

        alpha = 1 - (n - 1) * sum_u (m_u^2 - sum_k c_uk^2) / (m_u - 1)
                          / (n^2 - sum_k n_k^2)

    with ``c_uk`` labels of category k on item u, ``m_u = sum_k c_uk``, ``n_k = sum_u c_uk``
    over pairable items and ``n = sum_k n_k``. NaN when every label is the same category.
    """
    observed = 0.0
    totals: Counter = Counter()
    for labels in items:
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        observed += (m * m - sum(c * c for c in counts.values())) / (m - 1)
        totals.update(counts)
    n = sum(totals.values())
    expected = n * n - sum(c * c for c in totals.values())
    return 1 - (n - 1) * observed / expected if expected else math.nan


def category_table(items: Iterable[Sequence[Hashable]]) -> list[list[int]]:
    """The items x categories count table :func:`fleiss_kappa` takes."""
    items = [Counter(labels) for labels in items]
    categories = sorted({c for counts in items for c in counts}, key=repr)
    return [[counts[c] for c in categories] for counts in items]


# --- from stored labels to items ------------------------------------------------------

def comparison_items(labels: Iterable[tuple[Hashable, Hashable, int, str, Sequence[int] | None]]
                     ) -> dict[tuple, dict[Hashable, Hashable]]:
    """Items for agreement from labels ``(task, labeller, K, outcome, ranking)``.

    ``outcome`` is ``"ranked"`` (``ranking`` = answer indices best first), ``"tie"`` or
    ``"skip"`` (ignored). Returns ``{(task, i, j): {labeller: category}}`` for each
    answer pair i < j: the better answer's index, or ``"tie"``.
    """
    items: dict[tuple, dict[Hashable, Hashable]] = defaultdict(dict)
    for task, labeller, k, outcome, ranking in labels:
        if outcome == "skip":
            continue
        position = {answer: place for place, answer in enumerate(ranking or ())}
        for i, j in combinations(range(k), 2):
            if outcome == "tie":
                items[(task, i, j)][labeller] = "tie"
            else:
                items[(task, i, j)][labeller] = i if position[i] < position[j] else j
    return dict(items)


@dataclass
class AgreementReport:
    """Agreement over the items labelled at least twice (see the module doc).

    ``fleiss_kappa`` uses only the items with the most common number of labels
    (``fleiss_raters``), as the statistic needs the same number on every item.
    ``per_labeller[name] = (agreement with the others on shared items, pairs compared)``.
    """

    items: int
    percent_agreement: float
    krippendorff_alpha: float
    fleiss_kappa: float
    fleiss_items: int
    fleiss_raters: int
    per_labeller: dict[str, tuple[float, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        clean = lambda x: None if isinstance(x, float) and math.isnan(x) else x  # noqa: E731
        out = {k: clean(v) for k, v in self.__dict__.items() if k != "per_labeller"}
        out["per_labeller"] = {name: {"agreement": clean(rate), "pairs": pairs}
                               for name, (rate, pairs) in self.per_labeller.items()}
        return out


def agreement_report(items: Mapping[tuple, Mapping[Hashable, Hashable]]) -> AgreementReport:
    """Every statistic of this module for items from :func:`comparison_items`."""
    shared = [judged for judged in items.values() if len(judged) >= 2]
    lists = [list(judged.values()) for judged in shared]
    sizes = Counter(len(labels) for labels in lists)
    raters = max(sizes, key=lambda n: (sizes[n], n)) if sizes else 0
    modal = [labels for labels in lists if len(labels) == raters]

    per_labeller: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])
    for judged in shared:
        for a, b in combinations(judged, 2):
            same = int(judged[a] == judged[b])
            for who in (a, b):
                per_labeller[who][0] += same
                per_labeller[who][1] += 1
    return AgreementReport(
        items=len(shared),
        percent_agreement=percent_agreement(lists),
        krippendorff_alpha=krippendorff_alpha(lists),
        fleiss_kappa=fleiss_kappa(category_table(modal)) if modal else math.nan,
        fleiss_items=len(modal),
        fleiss_raters=raters,
        per_labeller={who: (agree / pairs, pairs)
                      for who, (agree, pairs) in sorted(per_labeller.items())},
    )
