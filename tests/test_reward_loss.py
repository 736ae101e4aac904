"""Reward-model losses and metrics in rlxf.rl.reward_loss, checked against hand values.

Useful constants: -log sigma(d) = log(1 + e^-d), so
    d =  2: log(1 + e^-2) = 0.1269280110
    d =  1: log(1 + e^-1) = 0.3132616875
    d =  0: log 2         = 0.6931471806
    d = -1: log(1 + e)    = 1.3132616875
"""

from __future__ import annotations

import math

import torch

from rlxf.rl import (bradley_terry_loss, expected_calibration_error, kwise_ranking_loss,
                     pairwise_accuracy, soft_label_loss)

NLS = {d: math.log1p(math.exp(-d)) for d in (2, 1, 0, -1)}  # -log sigma(d)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64),
                               rtol=0.0, atol=atol)


def test_bradley_terry_by_hand():
    # One pair with d = 1: log(1 + e^-1). Two pairs with d = +1 and -1: the mean.
    close(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])), NLS[1])
    close(bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])),
          (NLS[1] + NLS[-1]) / 2)
    # Margin m = 1 with d = 2 gives d - m = 1; a per-pair margin works too.
    close(bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), margin=1.0), NLS[1])
    close(bradley_terry_loss(torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0]),
                             margin=torch.tensor([1.0, 3.0])), (NLS[1] + NLS[-1]) / 2)


def test_bradley_terry_gradient_and_stability():
    # d/d r_chosen of -log sigma(d) = -(1 - sigma(d)) = -sigma(-d); at d = 1: -0.2689414.
    r_chosen = torch.tensor([1.0], requires_grad=True)
    bradley_terry_loss(r_chosen, torch.tensor([0.0])).backward()
    close(r_chosen.grad, [-1 / (1 + math.e)])
    # |d| = 200: log(sigmoid(-200)) underflows to -inf in float32; logsigmoid gives 200.
    close(bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0])), 200.0)
    close(bradley_terry_loss(torch.tensor([200.0]), torch.tensor([0.0])), 0.0)


def test_kwise_loss_is_the_mean_of_the_pairwise_losses_k3():
    # Rewards of answers ranked best -> worst: [3, 1, 2]. Pairs (better, worse):
    #   (0,1): d = 2  -> 0.1269280;  (0,2): d = 1 -> 0.3132617;  (1,2): d = -1 -> 1.3132617
    # InstructGPT weight 1/C(3,2) = 1/3 each: loss = 1.7534514 / 3 = 0.5844838.
    rewards = torch.tensor([[3.0, 1.0, 2.0]])
    expected = (NLS[2] + NLS[1] + NLS[-1]) / 3
    close(kwise_ranking_loss(rewards), expected)
    pairwise = bradley_terry_loss(torch.tensor([3.0, 3.0, 1.0]), torch.tensor([1.0, 2.0, 2.0]))
    close(kwise_ranking_loss(rewards), pairwise)


def test_kwise_loss_weights_each_prompt_equally_and_handles_variable_k():
    # Prompt A: K = 3 as above, loss 0.5844838 (mean of its 3 pairs).
    # Prompt B: K = 2 (third slot padded with NaN), one pair with d = 0: log 2.
    # Prompt C: one real answer, no pairs: left out of the mean.
    # loss = (0.5844838 + 0.6931472) / 2 = 0.6388155 -- not the mean over the 4 pairs
    # (0.6116710), which would give prompt A three times B's weight.
    nan = float("nan")
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.5, nan], [7.0, nan, nan]],
                           requires_grad=True)
    k_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    loss = kwise_ranking_loss(rewards, k_mask)
    close(loss, ((NLS[2] + NLS[1] + NLS[-1]) / 3 + NLS[0]) / 2)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    # Prompt B's gradient: d/dr_0 of (1/2) * (1/1) * -log sigma(r_0 - r_1) at d = 0 is
    # (1/2) * -sigma(0) = -0.25; padded slots get 0.
    close(rewards.grad[1], [-0.25, 0.25, 0.0])
    close(rewards.grad[2], [0.0, 0.0, 0.0])


def test_soft_label_loss():
    d = torch.tensor([1.0, -0.3, 2.5])
    r_rejected = torch.tensor([0.2, 0.0, -1.0])
    r_chosen = r_rejected + d
    # p = 1 is the Bradley-Terry loss.
    close(soft_label_loss(r_chosen, r_rejected, 1.0), bradley_terry_loss(r_chosen, r_rejected))
    # p = 1/2 is symmetric: swapping the two answers changes nothing; at d = 0 it is log 2.
    close(soft_label_loss(r_chosen, r_rejected, 0.5), soft_label_loss(r_rejected, r_chosen, 0.5))
    close(soft_label_loss(torch.tensor([0.3]), torch.tensor([0.3]), 0.5), NLS[0])
    # p = 3/4, d = 1: 0.75 * log(1 + e^-1) + 0.25 * log(1 + e) = 0.5632617.
    # Gradient in d: sigma(d) - p = 0.7310586 - 0.75 = -0.0189414 (zero at sigma(d) = p).
    r = torch.tensor([1.0], requires_grad=True)
    loss = soft_label_loss(r, torch.tensor([0.0]), torch.tensor([0.75]))
    close(loss, 0.75 * NLS[1] + 0.25 * NLS[-1])
    loss.backward()
    close(r.grad, [1 / (1 + math.exp(-1)) - 0.75])


def test_pairwise_accuracy_counts_ties_half():
    # win, loss, tie, win -> (1 + 0 + 0.5 + 1) / 4 = 0.625
    close(pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0, 0.0]),
                            torch.tensor([0.0, 3.0, 3.0, -1.0])), 0.625)
    close(pairwise_accuracy(torch.zeros(5), torch.zeros(5)), 0.5)


def test_expected_calibration_error_by_hand():
    # 5 bins over confidence [0.5, 1]: [.5,.6) [.6,.7) [.7,.8) [.8,.9) [.9,1].
    #   p=0.95, outcome 1: conf 0.95, right (1)  -> bin 4, gap |1 - 0.95|   = 0.05
    #   p=0.82, outcome 0: conf 0.82, wrong (0)  -> bin 3, gap |0 - 0.82|   = 0.82
    #   p=0.25, outcome 0: conf 0.75, right (1)  -> bin 2, gap |1 - 0.75|   = 0.25
    #   p=0.50, outcome 1: conf 0.50, half (0.5) -> bin 0, gap |0.5 - 0.5| = 0
    # ECE = (1/4) * (0.05 + 0.82 + 0.25 + 0) = 0.28
    probs = torch.tensor([0.95, 0.82, 0.25, 0.5])
    outcomes = torch.tensor([1.0, 0.0, 0.0, 1.0])
    close(expected_calibration_error(probs, outcomes, n_bins=5), 0.28)
    # Naming the other answer "first" (p -> 1 - p, outcome -> 1 - outcome) changes nothing.
    close(expected_calibration_error(1 - probs, 1 - outcomes, n_bins=5), 0.28)
    # Two predictions in one bin: p = 0.95 (right) and 0.92 (wrong) -> conf mean 0.935,
    # accuracy 0.5, ECE = |0.5 - 0.935| = 0.435.
    close(expected_calibration_error(torch.tensor([0.95, 0.92]), torch.tensor([1, 0]), 5), 0.435)
    # Calibrated: confidence 0.75, right 3 times out of 4 -> 0.
    close(expected_calibration_error(torch.full((4,), 0.75), torch.tensor([1, 1, 1, 0])), 0.0)
