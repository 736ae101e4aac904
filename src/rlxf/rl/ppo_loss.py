"""PPO's losses: clipped policy surrogate, clipped and plain value losses, PPO-ptx LM loss.

Every loss is a mean over the real tokens of the minibatch (``masked_mean``), the
token-level mean of "The N implementation details of RLHF with PPO" (Huang et al.
2024). Diagnostics are detached.

Padded positions are replaced by neutral values with ``torch.where`` *before* any
exp or square: masking only the final per-token loss is not enough, because a NaN
or inf in padding then still reaches the gradient (0 * inf = NaN in backward).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlxf.rl.kl import kl_k3
from rlxf.rl.logprobs import logprobs_from_logits
from rlxf.rl.masked import masked_mean


class PolicyLossOut(NamedTuple):
    """What :func:`policy_loss` returns; every field is a scalar tensor.

    Fields:
        loss: the clipped surrogate loss to minimise (has gradient).
        clip_frac: fraction of real tokens where the clipped term was chosen, i.e.
            where the token gives no gradient.
        approx_kl: k3 estimate of KL(pi_old || pi_theta) per token (see
            :func:`policy_loss`).
        ratio_mean: mean of pi_theta / pi_old over real tokens (1 at the first
            minibatch of an epoch; drifting far from 1 means the policy moved a lot).
    """

    loss: torch.Tensor
    clip_frac: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


class ValueLossOut(NamedTuple):
    """What the value losses return; scalar tensors.

    Fields:
        loss: the value loss to minimise (has gradient).
        clip_frac: fraction of real tokens where the clipped term was the larger one
            (always 0 for :func:`value_loss_unclipped`).
    """

    loss: torch.Tensor
    clip_frac: torch.Tensor


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> PolicyLossOut:
    """PPO's clipped surrogate, negated for minimisation.

    PPO (Schulman et al. 2017, arXiv 1707.06347, eq. 7):

        L = -E_t[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ],
        rho_t = pi_theta(a_t | s_t) / pi_old(a_t | s_t)

    The gradient is zero on the tokens where the clipped term is the smaller one
    (A > 0 with rho > 1 + eps, A < 0 with rho < 1 - eps).

    ``approx_kl`` is Schulman's k3 with the rollout policy as the sampling
    distribution: mean of (rho - 1) - log rho, an unbiased, non-negative estimate
    of KL(pi_old || pi_theta) ("Approximating KL Divergence", 2020).

    Args:
        logp: (B, T) log-probs of the rollout tokens under the current policy
            (with gradient).
        old_logp: (B, T) the same under the policy that generated the rollout.
        advantages: (B, T) e.g. whitened GAE advantages.
        mask: (B, T) 1 on real response tokens.
        clip_range: epsilon, e.g. 0.2.
    """
    keep = mask.bool()
    log_ratio = torch.where(keep, logp - old_logp, 0.0)  # (B, T)
    advantages = torch.where(keep, advantages, 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(kl_k3(old_logp, logp), mask)  # r = pi_theta / pi_old
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLossOut(loss, clip_frac, approx_kl, ratio_mean)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range: float) -> ValueLossOut:
    """Clipped value loss: 1/2 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).

    The value function moves at most ``clip_range`` away from its rollout-time
    prediction before the clipped term takes over and stops the gradient; from
    OpenAI's baselines PPO2 and lm-human-preferences ("The N implementation details
    of RLHF with PPO", Huang et al. 2024, value-function clipping).

    Args:
        values: (B, T) current value predictions (with gradient).
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) targets, e.g. GAE returns.
        mask: (B, T) 1 on real response tokens.
        clip_range: epsilon in the units of the value (e.g. 0.2).
    """
    keep = mask.bool()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = torch.where(keep, values - returns, 0.0) ** 2  # (B, T)
    clipped_error = torch.where(keep, clipped_values - returns, 0.0) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return ValueLossOut(loss, clip_frac)


def value_loss_unclipped(values: torch.Tensor, returns: torch.Tensor,
                         mask: torch.Tensor) -> ValueLossOut:
    """Plain value regression: 1/2 mean over real tokens of (V - R)^2.

    Args:
        values: (B, T) current value predictions (with gradient).
        returns: (B, T) targets.
        mask: (B, T) 1 on real response tokens.
    """
    loss = 0.5 * masked_mean(torch.where(mask.bool(), values - returns, 0.0) ** 2, mask)
    return ValueLossOut(loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over real tokens, for PPO-ptx.

    InstructGPT (arXiv 2203.02155, §3.5, eq. 2) adds gamma * E_pretrain[log pi(x)]
    to the RL objective; this is minus that expectation per token, to be weighted
    by the caller's ptx coefficient.

    Args:
        logits: (B, T, V), already aligned with ``labels`` (see ``logprobs``).
        labels: (B, T) target token ids.
        mask: (B, T) 1 on tokens that count; labels elsewhere are ignored.
    """
    labels = torch.where(mask.bool(), labels, 0)  # padding may hold -100 (HF's ignore index)
    return masked_mean(-logprobs_from_logits(logits, labels), mask)
