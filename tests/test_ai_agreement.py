"""Judge-vs-human agreement metrics, against tables worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlxf.evaluate.agreement import (Confusion, accuracy, binary_report, cohen_kappa, confusion, f1, landis_koch,
                                     precision, recall)


def _labels(tp: int, fp: int, fn: int, tn: int) -> tuple[list[bool], list[bool]]:
    truth = [True] * tp + [False] * fp + [True] * fn + [False] * tn
    pred = [True] * tp + [True] * fp + [False] * fn + [False] * tn
    return truth, pred


def test_two_by_two_table_by_hand():
    #                judge: A    judge: B
    # human: A        tp=20       fn=10      (30 human A)
    # human: B        fp=5        tn=15      (20 human B)
    #                 (25)        (25)       n = 50
    # accuracy  = (20 + 15) / 50 = 0.7
    # precision = 20 / 25 = 0.8;  recall = 20 / 30 = 2/3;  F1 = 2*20 / (2*20 + 5 + 10) = 40/55
    # p_o = 0.7;  p_e = (30/50)(25/50) + (20/50)(25/50) = 0.3 + 0.2 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4  -> "fair" (0.21-0.40)
    truth, pred = _labels(20, 5, 10, 15)
    c = confusion(truth, pred)
    assert c == Confusion(tp=20, fp=5, fn=10, tn=15)
    assert accuracy(c) == pytest.approx(0.7)
    assert precision(c) == pytest.approx(0.8)
    assert recall(c) == pytest.approx(2 / 3)
    assert f1(c) == pytest.approx(40 / 55)
    assert cohen_kappa(truth, pred) == pytest.approx(0.4)
    report = binary_report(truth, pred)
    assert report["kappa_interpretation"] == "fair" and report["n"] == 50
    assert report["confusion"] == {"tp": 20, "fp": 5, "fn": 10, "tn": 15}


def test_kappa_below_chance_and_undefined_cases():
    # tp=5 fp=20 fn=20 tn=5: p_o = 10/50 = 0.2; p_e = 0.5*0.5 + 0.5*0.5 = 0.5
    # kappa = (0.2 - 0.5) / 0.5 = -0.6 -> "poor"
    truth, pred = _labels(5, 20, 20, 5)
    assert cohen_kappa(truth, pred) == pytest.approx(-0.6)
    assert landis_koch(-0.6) == "poor"
    # both raters always say A: p_e = 1, kappa undefined; no predicted positive: precision undefined
    assert math.isnan(cohen_kappa([True] * 4, [True] * 4))
    assert binary_report([True] * 4, [True] * 4)["kappa_interpretation"] == "undefined"
    # humans say A twice, the judge B twice: p_o = 0, p_e = 1*0 + 0*1 = 0, kappa = 0
    report = binary_report([True, True], [False, False])
    assert report["precision"] is None and report["accuracy"] == 0.0 and report["cohen_kappa"] == 0.0


def test_kappa_with_three_categories():
    # a: x x y y z z;  b: x y y y z x
    # p_o = 4/6 (positions 1, 3, 4, 5); counts a: x2 y2 z2; b: x2 y3 z1
    # p_e = (2*2 + 2*3 + 2*1) / 36 = 12/36 = 1/3;  kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert cohen_kappa(list("xxyyzz"), list("xyyyzx")) == pytest.approx(0.5)


@pytest.mark.parametrize("kappa, word", [
    (0.0, "slight"), (0.2, "slight"), (0.21, "fair"), (0.4, "fair"), (0.55, "moderate"),
    (0.61, "substantial"), (0.8, "substantial"), (0.81, "almost perfect"), (1.0, "almost perfect"),
])
def test_landis_koch_scale(kappa, word):
    assert landis_koch(kappa) == word


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        confusion([True, False], [True])
