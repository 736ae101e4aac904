"""Generalised advantage estimation over right-padded token rewards."""

from __future__ import annotations

import torch


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by GAE(gamma, lambda), from the last token backwards.

    GAE (Schulman et al. 2015, arXiv 1506.02438, eq. 16):

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V(s_t)           (the value targets)

    Each response is one episode that ends at its last real token, so the value
    after it is 0 (also for answers cut off at the length limit: RLHF scores them
    as finished). Padded positions count as absent: their reward and value are
    taken as 0, their advantage and return are 0, and nothing propagates across
    them. Left padding and right padding both work.

    Computed without gradient: PPO treats advantages and returns as constants.

    Args:
        rewards: (B, T) per-token rewards (e.g. from ``penalised_rewards``).
        values: (B, T) value estimates V(s_t) from the rollout.
        mask: (B, T) 1 on real response tokens.
        gamma: discount, in [0, 1].
        lam: GAE lambda, in [0, 1].

    Returns:
        (advantages, returns), both (B, T).
    """
    keep = mask.bool()
    rewards = torch.where(keep, rewards, 0.0)  # (B, T)
    values = torch.where(keep, values, 0.0)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = torch.where(keep[:, t], delta + gamma * lam * next_advantage, 0.0)
        advantages_reversed.append(advantage)
        next_value, next_advantage = values[:, t], advantage
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    return advantages, advantages + values
