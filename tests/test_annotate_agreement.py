"""Agreement metrics against values worked out by hand (in the comments)."""

from __future__ import annotations

import math

import pytest

from rlxf.feedback.human.agreement import (agreement_report, category_table, comparison_items,
                                          fleiss_kappa, krippendorff_alpha, percent_agreement)

# Four items, three raters each, categories A and B:
#   item 1: A A A    item 2: A A B    item 3: B B B    item 4: A B B
ITEMS = [["A", "A", "A"], ["A", "A", "B"], ["B", "B", "B"], ["A", "B", "B"]]


def test_percent_agreement_by_hand():
    # Unordered rater pairs per item: 3. Agreeing pairs: 3, 1, 3, 1 -> 8 of 12.
    assert percent_agreement(ITEMS) == pytest.approx(8 / 12, abs=1e-12)
    # An item with one label has no pairs and does not count: still 8 / 12.
    assert percent_agreement(ITEMS + [["A"]]) == pytest.approx(8 / 12, abs=1e-12)
    assert math.isnan(percent_agreement([["A"]]))


def test_fleiss_kappa_by_hand():
    # counts (A, B): [3,0] [2,1] [0,3] [1,2]; n = 3 raters, N = 4 items.
    # P_i = (sum_j n_ij^2 - n) / (n (n-1)) = (9-3)/6, (5-3)/6, (9-3)/6, (5-3)/6
    #     = 1, 1/3, 1, 1/3                       -> P_bar = (8/3) / 4 = 2/3
    # p_A = (3+2+0+1)/12 = 1/2, p_B = 1/2        -> P_e = 1/4 + 1/4 = 1/2
    # kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3
    table = category_table(ITEMS)
    assert table == [[3, 0], [2, 1], [0, 3], [1, 2]]
    assert fleiss_kappa(table) == pytest.approx(1 / 3, abs=1e-12)


def test_fleiss_kappa_perfect_chance_and_bad_input():
    # Perfect agreement with both categories used: P_bar = 1, P_e = 1/2 -> kappa = 1.
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0, abs=1e-12)
    # Systematic disagreement: P_i = (1+1-2)/2 = 0 for each, P_e = 1/2 -> kappa = -1.
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0, abs=1e-12)
    # Everyone always says A: chance agreement is already 1, kappa undefined.
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 2]])


def test_krippendorff_alpha_by_hand():
    # Coincidence matrix of ITEMS: each ordered pair of values from two different raters
    # on an item adds 1/(m_u - 1) = 1/2.
    #   AAA: 6 ordered (A,A) pairs -> o_AA += 3
    #   AAB: (A,A) x2, (A,B) x2, (B,A) x2 -> o_AA += 1, o_AB += 1, o_BA += 1
    #   BBB: o_BB += 3;  ABB: o_BB += 1, o_AB += 1, o_BA += 1
    # o_AA = 4, o_AB = o_BA = 2, o_BB = 4; n_A = n_B = 6, n = 12.
    # alpha = 1 - (n-1) (o_AB + o_BA) / (n_A n_B + n_B n_A) = 1 - 11 * 4 / 72 = 7/18
    assert krippendorff_alpha(ITEMS) == pytest.approx(7 / 18, abs=1e-12)


def test_krippendorff_alpha_with_uneven_raters():
    # Items [A, A], [A, B, B], [B]; the last is unpairable and dropped.
    #   [A, A]: 2 ordered (A,A) pairs x 1/(2-1) -> o_AA = 2
    #   [A, B, B]: (A,B) x2, (B,A) x2, (B,B) x2, each x 1/2 -> o_AB = o_BA = o_BB = 1
    # n_A = o_AA + o_AB = 3, n_B = o_BA + o_BB = 2, n = 5.
    # alpha = 1 - (n-1) (o_AB + o_BA) / (2 n_A n_B) = 1 - 4 * 2 / 12 = 1/3
    assert krippendorff_alpha([["A", "A"], ["A", "B", "B"], ["B"]]) == pytest.approx(
        1 / 3, abs=1e-12)
    assert math.isnan(krippendorff_alpha([["A", "A"], ["A", "A"]]))


def test_comparison_items_turn_rankings_into_answer_pairs():
    labels = [
        # task 1, a pair: ann prefers answer 1, bob answer 1, cid says tie, dan skips
        (1, "ann", 2, "ranked", (1, 0)), (1, "bob", 2, "ranked", (1, 0)),
        (1, "cid", 2, "tie", None), (1, "dan", 2, "skip", None),
        # task 2, three answers: ann ranks 2 > 0 > 1, bob ranks 0 > 2 > 1
        (2, "ann", 3, "ranked", (2, 0, 1)), (2, "bob", 3, "ranked", (0, 2, 1)),
    ]
    items = comparison_items(labels)
    assert items == {
        (1, 0, 1): {"ann": 1, "bob": 1, "cid": "tie"},
        (2, 0, 1): {"ann": 0, "bob": 0},
        (2, 0, 2): {"ann": 2, "bob": 0},
        (2, 1, 2): {"ann": 2, "bob": 2},
    }
    report = agreement_report(items)
    # Pairs of labels per item: task 1: ann-bob agree, ann-cid, bob-cid disagree (1 of 3);
    # task 2: (0,1) agree, (0,2) disagree, (1,2) agree. Total 3 of 6 agree.
    assert report.items == 4
    assert report.percent_agreement == pytest.approx(3 / 6, abs=1e-12)
    # Fleiss uses the modal rater count: three items with 2 labels.
    assert (report.fleiss_items, report.fleiss_raters) == (3, 2)
    # ann: with bob on 4 items (all but (2, 0, 2) agree), with cid on 1 (no) -> 3 / 5.
    # cid: 2 comparisons, none agree.
    assert report.per_labeller["ann"] == (pytest.approx(3 / 5), 5)
    assert report.per_labeller["cid"] == (0.0, 2)
    assert report.as_dict()["per_labeller"]["bob"] == {"agreement": pytest.approx(0.6),
                                                       "pairs": 5}
