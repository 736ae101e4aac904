"""The KL penalty to the reference model: estimators, penalised rewards, controllers.

Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi, after John
Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html).
Write r = pi_ref(y) / pi(y) = exp(ref_logp - logp); then

    k1 = -log r              unbiased, high variance, can be negative
    k2 = (log r)^2 / 2       biased, low variance, >= 0
    k3 = (r - 1) - log r     unbiased, low variance, >= 0

Each takes and returns (B, T) tensors; average over the mask for a per-token KL, or
sum over T for a per-sequence one.
"""

from __future__ import annotations

from typing import Callable

import torch

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref_logp (Schulman 2020), the estimator InstructGPT's penalty uses.

    Args: logp, ref_logp: (B, T) log-probs of the sampled tokens under the policy and
    the reference. Returns (B, T).
    """
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (logp - ref_logp)^2 / 2 (Schulman 2020). Shapes as :func:`kl_k1`."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = exp(ref_logp - logp) (Schulman 2020).

    ``expm1`` keeps r - 1 exact when the two models nearly agree. r overflows to inf
    in float32 when ref_logp - logp > ~88, i.e. for a token the policy itself almost
    never samples. Shapes as :func:`kl_k1`.
    """
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


@torch.no_grad()
def penalised_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float,
                      kl_estimator: KLEstimator = kl_k1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: a KL penalty on every token, the RM score on the last one.

    InstructGPT (arXiv 2203.02155, §3.5, eq. 2) maximises
    r_theta(x, y) - beta * log(pi(y|x) / pi_SFT(y|x)); spread over the answer's tokens
    (Ziegler et al. 2019, arXiv 1909.08593, §2.2) this is

        reward_t = -beta * kl_t              for every real token t
        reward_T += score                    at the last real token T

    ``mask`` may be ragged; the score goes to the last position where the mask is
    1. A row whose mask is all zero (an empty answer) has nowhere to put its score:
    its rewards and KL are all 0 and its score is dropped (every loss masks that
    row out anyway). Padded positions get 0 reward and 0 KL even if the log-probs
    there are garbage.

    Computed without gradient: rollout rewards are constants for PPO.

    Args:
        score: (B,) reward-model score of each whole answer.
        logp: (B, T) log-probs of the sampled tokens under the policy.
        ref_logp: (B, T) the same under the frozen reference (SFT) model.
        mask: (B, T) 1 on real response tokens.
        kl_coef: beta, the KL coefficient (a controller's ``.value``).
        kl_estimator: one of :func:`kl_k1` (default, as in InstructGPT),
            :func:`kl_k2`, :func:`kl_k3`.

    Returns:
        (rewards, kl), both (B, T); ``-kl_coef * kl`` is the "non-score reward".
    """
    keep = mask.bool()
    kl = torch.where(keep, kl_estimator(logp, ref_logp), 0.0)  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    positions = torch.arange(keep.shape[1], device=keep.device)  # (T,)
    last = torch.where(keep, positions, -1).amax(dim=1)  # (B,), -1 for an empty row
    at_last = positions == last.unsqueeze(1)  # (B, T), all False for an empty row
    rewards = rewards + torch.where(at_last, score.to(rewards.dtype).unsqueeze(1), 0.0)
    return rewards, kl


class FixedKLController:
    """A constant KL coefficient (Ziegler et al. 2019, arXiv 1909.08593, §2.2)."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing; present so that both controllers are used the same way."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """A KL coefficient that steers the measured KL towards a target.

    The proportional controller of Ziegler et al. 2019 (arXiv 1909.08593, §2.2):

        e_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_t+1  = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    where n_steps is the number of samples (or steps) since the last update, so the
    coefficient moves by at most 20% per ``horizon`` samples.

    Args:
        init_coef: beta_0, >= 0.
        target: KL_target in nats, > 0 (per sequence or per token, whichever the
            caller measures ``current_kl`` in).
        horizon: > 0, in the same unit as ``n_steps``.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs init_coef >= 0, target > 0 and "
                             f"horizon > 0, got {init_coef}, {target}, {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` after a batch whose measured KL was ``current_kl``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        """The coefficient; target and horizon come from the run's config."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
