"""The pure RLHF math in rlxf.rl, checked against numbers derived by hand.

Each test writes its derivation in comments; tolerances are tight (1e-6 in
float32, 1e-12 in float64) so that a wrong sign, a missing 1/2 or an off-by-one
mask fails.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlxf.rl import (AdaptiveKLController, FixedKLController, entropy_from_logits, gae,
                     kl_k1, kl_k2, kl_k3, lm_loss, logprobs_from_logits, masked_mean,
                     masked_var, masked_whiten, penalised_rewards, policy_loss, value_loss,
                     value_loss_unclipped)

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64),
                               rtol=0.0, atol=atol)


# --- logprobs -------------------------------------------------------------------------


def test_logprobs_by_hand():
    # logits [0, ln 2, ln 3] -> exp = [1, 2, 3], sum 6.
    # label 2: log(3/6) = -ln 2.  label 0: log(1/6) = -ln 6.
    logits = torch.tensor([[[0.0, LN2, LN3], [0.0, LN2, LN3]]])  # (1, 2, 3)
    labels = torch.tensor([[2, 0]])
    close(logprobs_from_logits(logits, labels), [[-LN2, -math.log(6.0)]])
    # temperature 2: z / 2 = [0, ln sqrt2, ln sqrt3] -> exp = [1, sqrt2, sqrt3];
    # label 0: -ln(1 + sqrt2 + sqrt3).
    close(logprobs_from_logits(logits[:, :1], labels[:, 1:], temperature=2.0),
          [[-math.log(1 + math.sqrt(2) + math.sqrt(3))]])


def test_logprobs_match_naive_log_softmax_with_temperature():
    gen = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(3, 4, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 4), generator=gen)
    for temperature in (1.0, 0.7, 2.5):
        naive = F.log_softmax(logits / temperature, dim=-1).gather(-1, labels[..., None])[..., 0]
        close(logprobs_from_logits(logits, labels, temperature), naive, atol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, labels, temperature=0.0)


def test_entropy_by_hand_and_against_naive():
    # Uniform over 4: H = ln 4.  p = [1, 2, 3] / 6:
    # H = -(1/6 ln 1/6 + 2/6 ln 2/6 + 3/6 ln 3/6) = ln 6 - (2 ln 2 + 3 ln 3) / 6.
    close(entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4)]])
    close(entropy_from_logits(torch.tensor([[[0.0, LN2, LN3]]])),
          [[math.log(6) - (2 * LN2 + 3 * LN3) / 6]])
    logits = 3 * torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
    for temperature in (1.0, 0.5):
        logp = F.log_softmax(logits / temperature, dim=-1)
        close(entropy_from_logits(logits, temperature), -(logp.exp() * logp).sum(-1), atol=1e-12)


# --- KL estimators ----------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # Token 1: pi = 1/2, pi_ref = 1/4, so r = pi_ref / pi = 1/2:
    #   k1 = ln 2, k2 = (ln 2)^2 / 2, k3 = (1/2 - 1) - ln(1/2) = ln 2 - 1/2.
    # Token 2: pi = 1/4, pi_ref = 1/2, r = 2:
    #   k1 = -ln 2, k2 = (ln 2)^2 / 2, k3 = (2 - 1) - ln 2 = 1 - ln 2.
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref_logp = torch.log(torch.tensor([[0.25, 0.5]]))
    close(kl_k1(logp, ref_logp), [[LN2, -LN2]])
    close(kl_k2(logp, ref_logp), [[LN2**2 / 2, LN2**2 / 2]])
    close(kl_k3(logp, ref_logp), [[LN2 - 0.5, 1 - LN2]])


def test_k3_is_nonnegative_and_its_mean_approaches_the_true_kl():
    # p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]:
    #   KL(p || q) = 0.5 ln(0.5/0.2) + 0.3 ln 1 + 0.2 ln(0.2/0.5) = 0.3 ln 2.5 = 0.274887.
    # k3 per category (r = q/p = 0.4, 1, 2.5): 0.316291, 0, 0.583709, so
    #   E[k3] = 0.274887, Var[k3] = 0.5*0.316291^2 + 0.2*0.583709^2 - 0.274887^2 = 0.04260,
    #   std 0.2064; with N = 100_000 samples the standard error is 0.00065. The
    #   tolerance 0.003 is ~4.6 standard errors (seed fixed, so the test is deterministic).
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    true_kl = 0.3 * math.log(2.5)
    samples = torch.multinomial(p, 100_000, replacement=True,
                                generator=torch.Generator().manual_seed(0))
    logp, ref_logp = p.log()[samples], q.log()[samples]
    k3 = kl_k3(logp, ref_logp)
    assert (k3 >= 0).all()
    assert abs(k3.mean().item() - true_kl) < 0.003
    assert abs(kl_k1(logp, ref_logp).mean().item() - true_kl) < 0.006  # k1: std 0.55
    # k3 >= 0 for any pair of log-probs, not just these (x - 1 - ln x >= 0 for x > 0).
    a, b = torch.randn(2, 10_000, generator=torch.Generator().manual_seed(1)) * 5
    assert (kl_k3(a, b) >= 0).all()


# --- penalised rewards ------------------------------------------------------------------


def test_penalised_rewards_place_the_score_at_the_last_real_token():
    # kl_coef = 0.5, k1 = logp - ref_logp (ref_logp = 0 here, so k1 = logp).
    # Row 0, 3 real tokens, k1 = [0.1, 0.2, 0.3]:
    #   rewards = [-0.05, -0.10, -0.15 + 2] = [-0.05, -0.1, 1.85], then 0 padding.
    # Row 1, 4 real tokens, k1 = [0.4, -0.2, 0, 0.1], score -1:
    #   rewards = [-0.2, 0.1, 0, -0.05 - 1] = [-0.2, 0.1, 0, -1.05].
    # Row 2, 1 real token, k1 = 0.6, score 3: rewards = [-0.3 + 3, 0, 0, 0].
    # Row 3, empty answer: score 5 is dropped, all zeros.
    # Padding holds NaN/inf log-probs, which must not leak.
    nan, inf = float("nan"), float("inf")
    logp = torch.tensor([[0.1, 0.2, 0.3, nan],
                         [0.4, -0.2, 0.0, 0.1],
                         [0.6, inf, nan, 0.0],
                         [nan, nan, 1.0, 2.0]])
    ref_logp = torch.tensor([[0.0, 0.0, 0.0, 0.0]] * 3 + [[0.0, -inf, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    score = torch.tensor([2.0, -1.0, 3.0, 5.0])
    rewards, kl = penalised_rewards(score, logp, ref_logp, mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1, 1.85, 0.0],
                    [-0.2, 0.1, 0.0, -1.05],
                    [2.7, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0]])
    close(kl, [[0.1, 0.2, 0.3, 0.0], [0.4, -0.2, 0.0, 0.1], [0.6, 0, 0, 0], [0, 0, 0, 0]])
    # A float mask gives the same result as an int/bool one.
    rewards_float_mask, _ = penalised_rewards(score, logp, ref_logp, mask.float(), 0.5)
    close(rewards_float_mask, rewards, atol=0.0)
    # Left padding (mask [0, 0, 1, 1]): the score still goes to the last real token, 3,
    # which is not at index mask.sum() - 1 = 1. k1 = [_, _, 0.2, 0.4], kl_coef = 1:
    # rewards = [0, 0, -0.2, -0.4 + 2].
    left, _ = penalised_rewards(torch.tensor([2.0]), torch.tensor([[nan, nan, 0.2, 0.4]]),
                                torch.zeros(1, 4), torch.tensor([[0, 0, 1, 1]]), kl_coef=1.0)
    close(left, [[0.0, 0.0, -0.2, 1.6]])


def test_penalised_rewards_with_k3():
    # pi = 1/2, pi_ref = 1/4 on both tokens: k3 = ln 2 - 1/2 = 0.193147 each.
    # kl_coef = 0.1, score 1: rewards = [-0.0193147, -0.0193147 + 1].
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref_logp = torch.log(torch.tensor([[0.25, 0.25]]))
    rewards, kl = penalised_rewards(torch.tensor([1.0]), logp, ref_logp, torch.ones(1, 2),
                                    kl_coef=0.1, kl_estimator=kl_k3)
    k3 = LN2 - 0.5
    close(kl, [[k3, k3]])
    close(rewards, [[-0.1 * k3, 1 - 0.1 * k3]])


# --- KL controllers ---------------------------------------------------------------------


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=64)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_by_hand_and_exact_resume():
    # beta_0 = 0.2, target 6, horizon 10_000.
    # KL 9,   n 1000: e = clip(9/6 - 1 = 0.5)    = +0.2;  beta = 0.2   * (1 + 0.2*0.1) = 0.204
    # KL 4.5, n 1000: e = clip(4.5/6 - 1 = -0.25) = -0.2; beta = 0.204 * (1 - 0.2*0.1) = 0.19992
    # KL 6.6, n 500:  e = 6.6/6 - 1 = 0.1 (no clip);      beta = 0.19992 * (1 + 0.1*0.05)
    #                                                          = 0.19992 * 1.005 = 0.2009196
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10_000)
    ctl.update(9.0, 1000)
    close(ctl.value, 0.204, atol=1e-12)
    ctl.update(torch.tensor(4.5), 1000)  # a 0-d tensor works as well as a float
    close(ctl.value, 0.19992, atol=1e-12)

    resumed = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10_000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    for c in (ctl, resumed):
        c.update(6.6, 500)
    close(ctl.value, 0.2009196, atol=1e-12)
    assert resumed.value == ctl.value  # bit-identical after resume
    with pytest.raises(ValueError):
        AdaptiveKLController(init_coef=0.1, target=0.0, horizon=10)


# --- masked statistics ------------------------------------------------------------------


def test_masked_mean_and_var_by_hand():
    # Real values 1, 2, 4 (padding NaN): mean = 7/3.
    # Deviations -4/3, -1/3, 5/3; squares sum to (16 + 1 + 25)/9 = 14/3;
    # biased var = 14/9, unbiased = (14/3) / 2 = 7/3. Per row: [1.5, 4].
    nan = float("nan")
    x = torch.tensor([[1.0, 2.0, nan], [4.0, nan, nan]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    mean = masked_mean(x, mask)
    close(mean, 7 / 3)
    close(masked_mean(x, mask, dim=1), [1.5, 4.0])
    close(masked_var(x, mask, unbiased=False), 14 / 9)
    close(masked_var(x, mask), 7 / 3)
    mean.backward()  # d mean / d x = 1/3 on real tokens, 0 (not NaN) on padding
    close(x.grad, [[1 / 3, 1 / 3, 0.0], [1 / 3, 0.0, 0.0]])


def test_masked_mean_of_nothing_is_zero_and_var_of_too_little_raises():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    empty_row = torch.tensor([[0, 0], [1, 1]])
    close(masked_mean(x, empty_row, dim=1), [0.0, 3.5])
    close(masked_mean(x, torch.zeros(2, 2)), 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[1, 0], [0, 0]]))
    close(masked_var(x, torch.tensor([[1, 0], [0, 0]]), unbiased=False), 0.0)


def test_masked_whiten_by_hand():
    # Real values 1, 2, 4: mean 7/3, unbiased var 7/3, so
    # whitened = (x - 7/3) / sqrt(7/3); with shift_mean=False, + 7/3. Padding -> 0.
    x = torch.tensor([[1.0, 2.0, 4.0, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    s = math.sqrt(7 / 3)
    expected = [(1 - 7 / 3) / s, (2 - 7 / 3) / s, (4 - 7 / 3) / s]
    close(masked_whiten(x, mask), [expected + [0.0]], atol=1e-8)
    close(masked_whiten(x, mask, shift_mean=False), [[e + 7 / 3 for e in expected] + [0.0]],
          atol=1e-8)


def test_masked_whiten_gives_mean_0_var_1_and_ignores_padding():
    gen = torch.Generator().manual_seed(2)
    x = 3 + 5 * torch.randn(4, 6, generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5, [1] * 2 + [0] * 4])
    white = masked_whiten(x, mask)
    close(masked_mean(white, mask), 0.0)
    close(masked_var(white, mask), 1.0, atol=1e-5)
    assert (white[mask == 0] == 0).all()
    # Changing what sits in the padding changes nothing.
    x_other_padding = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
    close(masked_whiten(x_other_padding, mask), white, atol=0.0)
    # shift_mean=False: same scale, original mean kept.
    kept = masked_whiten(x, mask, shift_mean=False)
    close(masked_mean(kept, mask), masked_mean(x, mask), atol=1e-5)
    close(masked_var(kept, mask), 1.0, atol=1e-5)


# --- GAE ---------------------------------------------------------------------------------


def test_gae_by_hand():
    # gamma = 0.9, lam = 0.8 (gamma * lam = 0.72); rewards [1, 0, 2], values [0.5, 1, 1.5].
    # t=2 (last token, V after it = 0): delta = 2 + 0.9*0 - 1.5 = 0.5;   A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35;  A1 = 0.35 + 0.72*0.5  = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4;   A0 = 1.4  + 0.72*0.71 = 1.9112
    # returns = A + V = [2.4112, 1.71, 2.0]
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5]], dtype=torch.float64)
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5]], atol=1e-12)
    close(ret, [[2.4112, 1.71, 2.0]], atol=1e-12)
    # The same answer right-padded with garbage: same numbers, zeros after.
    nan = float("nan")
    adv_p, ret_p = gae(torch.tensor([[1.0, 0.0, 2.0, 7.0, nan]], dtype=torch.float64),
                       torch.tensor([[0.5, 1.0, 1.5, nan, 3.0]], dtype=torch.float64),
                       torch.tensor([[1, 1, 1, 0, 0]]), gamma=0.9, lam=0.8)
    close(adv_p, [[1.9112, 0.71, 0.5, 0.0, 0.0]], atol=1e-12)
    close(ret_p, [[2.4112, 1.71, 2.0, 0.0, 0.0]], atol=1e-12)


def gae_reference(rewards, values, lengths, gamma, lam):
    """Plain Python double loop over rows and time; rows are right-padded."""
    B, T = len(rewards), len(rewards[0])
    advantages = [[0.0] * T for _ in range(B)]
    for b in range(B):
        running = 0.0
        for t in reversed(range(lengths[b])):
            next_value = values[b][t + 1] if t + 1 < lengths[b] else 0.0
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            running = delta + gamma * lam * running
            advantages[b][t] = running
    returns = [[advantages[b][t] + (values[b][t] if t < lengths[b] else 0.0)
                for t in range(T)] for b in range(B)]
    return advantages, returns


def test_gae_matches_a_plain_loop_on_random_ragged_data():
    gen = torch.Generator().manual_seed(3)
    B, T = 7, 9
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = [9, 0, 1, 5, 3, 8, 9]
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    ref_adv, ref_ret = gae_reference(rewards.tolist(), values.tolist(), lengths, 0.95, 0.9)
    close(adv, ref_adv, atol=1e-12)
    close(ret, ref_ret, atol=1e-12)


def test_gae_returns_constants():
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.randn(2, 3), values, torch.ones(2, 3), gamma=1.0, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad


# --- PPO losses --------------------------------------------------------------------------


def test_policy_loss_clipping_by_hand_with_autograd():
    # clip_range 0.2, old_logp 0, logp = ln(rho); 4 real tokens + 1 NaN-padded token.
    # Per-token loss = max(-A rho, -A clip(rho, 0.8, 1.2)):
    #   A=+1, rho=1.5: max(-1.5, -1.2) = -1.2  clipped   -> gradient 0
    #   A=+1, rho=0.5: max(-0.5, -0.8) = -0.5  unclipped -> d/dlogp = -A rho / 4 = -0.125
    #   A=-1, rho=1.5: max( 1.5,  1.2) =  1.5  unclipped -> d/dlogp = -A rho / 4 = +0.375
    #   A=-1, rho=0.5: max( 0.5,  0.8) =  0.8  clipped   -> gradient 0
    # loss = (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15; clip_frac = 2/4; ratio mean = 4/4 = 1.
    # approx_kl = mean of k3 = (rho - 1) - ln rho: rho=1.5: 0.5 - ln 1.5 = 0.0945349;
    #   rho=0.5: ln 2 - 0.5 = 0.1931472; mean = 0.1438410.
    nan = float("nan")
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.0]])).requires_grad_()
    old_logp = torch.tensor([[0.0, 0.0, 0.0, 0.0, nan]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, nan]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    out = policy_loss(logp, old_logp, advantages, mask, clip_range=0.2)
    close(out.loss, 0.15)
    close(out.clip_frac, 0.5)
    close(out.ratio_mean, 1.0)
    close(out.approx_kl, ((0.5 - math.log(1.5)) + (LN2 - 0.5)) / 2)
    out.loss.backward()
    close(logp.grad, [[0.0, -0.125, 0.375, 0.0, 0.0]])
    assert not out.clip_frac.requires_grad and not out.approx_kl.requires_grad


def test_policy_loss_inside_the_clip_range_is_the_plain_surrogate():
    # rho = 1.1 within [0.8, 1.2], A = 2: loss = -2 * 1.1 = -2.2, d/dlogp = -A rho = -2.2.
    logp = torch.tensor([[math.log(1.1)]], requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 1), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    close(out.loss, -2.2)
    close(out.clip_frac, 0.0)
    out.loss.backward()
    close(logp.grad, [[-2.2]])
    # First minibatch of an epoch: logp == old_logp, so rho = 1, loss = -mean(A), KL 0.
    same = policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 6.0]]),
                       torch.ones(1, 3), 0.2)
    close(same.loss, -3.0)
    close(same.approx_kl, 0.0)


def test_value_loss_clipping_by_hand_with_autograd():
    # clip_range 0.2, old values all 1, so clip(V) is in [0.8, 1.2].
    #   V=1.5, R=2:   clip 1.2; (V-R)^2 = 0.25, (clipV-R)^2 = 0.64 -> 0.64 clipped, grad 0
    #   V=0.9, R=2:   clip 0.9; both 1.21                   -> 1.21, grad (V-R)/4 = -0.275
    #   V=1.5, R=0:   clip 1.2; 2.25 vs 1.44                -> 2.25, grad (V-R)/4 = +0.375
    #   V=0.5, R=0.6: clip 0.8; 0.01 vs 0.04                -> 0.04 clipped, grad 0
    # loss = 1/2 * (0.64 + 1.21 + 2.25 + 0.04) / 4 = 0.5175; clip_frac = 2/4.
    # A fifth, padded token holds inf and must give neither a NaN loss nor NaN gradient.
    inf = float("inf")
    values = torch.tensor([[1.5, 0.9, 1.5, 0.5, inf]], requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, 0.6, -inf]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    out = value_loss(values, old_values, returns, mask, clip_range=0.2)
    close(out.loss, 0.5175)
    close(out.clip_frac, 0.5)
    out.loss.backward()
    close(values.grad, [[0.0, -0.275, 0.375, 0.0, 0.0]])


def test_value_loss_unclipped_by_hand():
    # (V-R)^2 = 0.25, 1.21, 2.25, 0.01 -> loss = 1/2 * 3.72 / 4 = 0.465;
    # gradient (V - R) / 4 = [-0.125, -0.275, 0.375, -0.025].
    values = torch.tensor([[1.5, 0.9, 1.5, 0.5, 7.0]], requires_grad=True)
    returns = torch.tensor([[2.0, 2.0, 0.0, 0.6, 0.0]])
    out = value_loss_unclipped(values, returns, torch.tensor([[1, 1, 1, 1, 0]]))
    close(out.loss, 0.465)
    close(out.clip_frac, 0.0)
    out.loss.backward()
    close(values.grad, [[-0.125, -0.275, 0.375, -0.025, 0.0]])


def test_lm_loss_by_hand_and_against_cross_entropy():
    # Logits [0, ln 2, ln 3] at both positions; labels 2 then 0: NLL = ln 2 and ln 6;
    # the third position is padding (label -100, HF's ignore index): mean = (ln 2 + ln 6)/2.
    logits = torch.tensor([[[0.0, LN2, LN3]] * 3])  # (1, 3, 3)
    labels = torch.tensor([[2, 0, -100]])
    close(lm_loss(logits, labels, labels != -100), (LN2 + math.log(6)) / 2)
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 13, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 13, (3, 5), generator=gen)
    labels[1, 3:] = -100
    expected = F.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1), ignore_index=-100)
    close(lm_loss(logits, labels, labels != -100), expected, atol=1e-12)
