"""Curve diagnostics on synthetic curves (one test per verdict) and the PNG figures.

Every synthetic run has 200 logged steps; ``u`` runs from 0 to 1 over them. Noise is
Gaussian with a fixed seed, sized like a real PPO run's step-to-step scatter (a few
percent of the reward's rise), so the thresholds are exercised, not just the maths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlxf.evaluate.curves import (Thresholds, diagnose, diagnose_frame, figures, moving_average, read_metrics,
                                  write_curves)

STEPS = np.arange(1, 201)
U = (STEPS - 1) / 199


def noisy(values, scale, seed=0):
    return values + np.random.default_rng(seed).normal(0.0, scale, len(values))


def saturating(tau):
    """1 - exp(-u / tau): reaches 90% of its rise at u = tau * ln 10."""
    return 1.0 - np.exp(-U / tau)


def verdicts(*series, **kw):
    return [d.verdict for d in diagnose(STEPS, *series, **kw)]


def test_still_rising_at_the_end_is_under_trained():
    reward, kl = noisy(2.0 * U, 0.05), noisy(4.0 * U, 0.1, seed=1)  # both straight lines: no levelling off
    [d] = diagnose(STEPS, reward, kl)
    assert d.verdict == "under-trained" and "more steps would help" in d.message
    # the last 20% of a straight line adds 20% of its rise (>= 10%: still rising)
    assert d.numbers["tail_gain_share"] == pytest.approx(0.2, abs=0.05)


def test_levelling_off_in_the_first_quarter_means_fewer_steps_would_do():
    # tau = 0.05: 90% of the rise by u = 0.05 * ln 10 = 0.115, inside the first quarter
    [d] = diagnose(STEPS, noisy(saturating(0.05), 0.03), noisy(3 * saturating(0.05), 0.1, seed=1))
    assert d.verdict == "plateau-early" and "fewer steps" in d.message
    assert d.numbers["level_share"] < 0.25


def test_rising_then_levelling_off_late_is_converged_with_no_warning():
    # tau = 0.2: 90% by u = 0.46; over the last 20% it adds exp(-4) - exp(-5) = 1.2% (< 10%)
    found = diagnose(STEPS, noisy(saturating(0.2), 0.03), noisy(3 * saturating(0.2), 0.1, seed=1),
                     noisy(0.5 + 0.3 * saturating(0.2), 0.01, seed=2))
    assert [d.verdict for d in found] == ["converged"]  # no hacking, no over-optimisation
    assert found[0].severity == "ok" and 0.25 < found[0].numbers["level_share"] < 0.6


def test_kl_climbing_while_the_reward_has_levelled_off_warns_of_hacking():
    # KL = 8 u^2.5 makes 1 - 0.5^2.5 = 82% of its rise in the second half; the reward
    # (tau = 0.15) only exp(-3.3) = 4% of its rise there: 82% >= 50% and >= 2 x 4%
    found = diagnose(STEPS, noisy(saturating(0.15), 0.03), noisy(8 * U ** 2.5, 0.1, seed=1))
    assert [d.verdict for d in found] == ["converged", "reward-hacking"]
    hacking = found[1]
    assert hacking.severity == "warning" and hacking.numbers["kl_late_share"] == pytest.approx(0.82, abs=0.05)


def test_kl_still_climbing_after_the_reward_levelled_off_warns_of_hacking():
    # an S-shaped reward (centre u = 0.55) makes as much of its rise per nat of KL late as early,
    # but is flat over the last 20% of the steps, where the linear KL still adds 20% of its rise
    reward = noisy(1 / (1 + np.exp(-(U - 0.55) / 0.06)), 0.03)
    found = diagnose(STEPS, reward, noisy(3 * U, 0.1, seed=1))
    assert [d.verdict for d in found] == ["converged", "reward-hacking"]
    assert found[1].numbers["kl_tail_share"] == pytest.approx(0.2, abs=0.03)
    assert "still climbing at the end" in found[1].message


def test_kl_and_reward_rising_together_is_not_hacking():
    assert "reward-hacking" not in verdicts(noisy(2.0 * U, 0.05), noisy(4.0 * U, 0.1, seed=1))


def test_gold_falling_while_the_proxy_rises_is_over_optimisation():
    # Gao et al. 2022's picture: the proxy keeps rising; gold peaks at u = 0.4, then falls back
    proxy = noisy(1.5 * U + 0.5 * saturating(0.1), 0.03)
    gold = noisy(0.6 + 0.3 * np.sin(np.pi * U / 0.8) * (U < 0.8) - 0.2 * (U >= 0.8) * (U - 0.8) / 0.2, 0.01, 2)
    found = diagnose(STEPS, proxy, noisy(3 * U, 0.1, seed=1), gold)
    over = [d for d in found if d.verdict == "over-optimisation"]
    assert len(over) == 1 and over[0].severity == "warning"
    assert 60 <= over[0].numbers["gold_peak_step"] <= 100  # the smoothed peak, near u = 0.4 (step 81)
    # the same proxy with gold rising alongside it is fine
    assert "over-optimisation" not in verdicts(proxy, None, noisy(0.5 + 0.3 * U, 0.01, 2))


def test_a_flat_reward_is_no_rise_and_few_points_give_no_verdict():
    assert verdicts(noisy(np.zeros(200), 0.05), noisy(np.zeros(200), 0.1, 1)) == ["no-rise"]
    [d] = diagnose([1, 2, 3], [0.1, 0.2, 0.3])
    assert d.verdict == "too-few-points"


def test_thresholds_are_the_ones_used():
    curve = noisy(saturating(0.05), 0.03)  # levels off at 11.5% of the steps
    assert verdicts(curve) == ["plateau-early"]
    assert verdicts(curve, thresholds=Thresholds(early=0.1)) == ["converged"]
    line = 2.0 * U  # the tail adds 20% of the rise
    assert verdicts(line, thresholds=Thresholds(still_rising=0.25)) != ["under-trained"]


def test_moving_average_keeps_length_and_ends():
    # window 3, centred; at the ends only the points that exist: (1+2)/2, ..., (4+5)/2
    assert moving_average([1, 2, 3, 4, 5], 3).tolist() == [1.5, 2.0, 3.0, 4.0, 4.5]


def test_series_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        diagnose([1, 2, 3], [1, 2, 3], [1, 2])


def write_ppo_metrics(path, n=60, gold=True):
    """A metrics.jsonl shaped like rlxf ppo's: a row per step, eval rows every 20 steps."""
    rows = []
    for step in range(1, n + 1):
        u = step / n
        row = {"step": step, "score": float(1 - np.exp(-u / 0.2)), "kl": 3 * u * u, "reward": 0.9 * u, "lr": 1e-5}
        if gold:
            row["gold"] = 0.5 + 0.2 * u
        if step % 20 == 0:
            row["eval_score"] = float(1 - np.exp(-u / 0.2))
            if gold:
                row["eval_gold"] = 0.5 + 0.2 * u
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_figures_from_a_ppo_metrics_file(tmp_path):
    frame = read_metrics(write_ppo_metrics(tmp_path / "metrics.jsonl"))
    names = [f.name for f in figures(frame)]
    assert names == ["reward", "kl", "gold", "overoptimisation"]
    paths = write_curves(tmp_path / "metrics.jsonl", tmp_path / "curves")
    assert [p.name for p in paths] == [f"{n}.png" for n in names]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (640, 360)
    # KL = 3u² makes 75% of its rise in the second half, the score (tau = 0.2) 8%: hacking warning
    assert [d.verdict for d in diagnose_frame(frame)] == ["converged", "reward-hacking"]


def test_non_rl_runs_get_loss_curves_and_no_diagnosis(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 30))
                    + json.dumps({"step": 29, "eval_loss": 0.2}) + "\n")
    frame = read_metrics(path)
    assert [f.name for f in figures(frame)] == ["loss"] and diagnose_frame(frame) == []
