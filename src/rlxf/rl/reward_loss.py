"""Reward-model losses (pairwise, K-wise, soft-label) and their evaluation metrics.

All losses use ``logsigmoid``: -log sigma(d) = log(1 + e^-d) computed this way stays
finite and accurate for large |d|, where log(sigmoid(d)) underflows to -inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Pairwise Bradley-Terry loss: mean of -log sigma(r_w - r_l - m).

    InstructGPT (arXiv 2203.02155, §3.5, eq. 1) with K = 2. The optional margin m
    asks the chosen answer to win by at least m (Llama 2, arXiv 2307.09288, eq. 2).

    Args:
        r_chosen: (B,) rewards of the preferred answers.
        r_rejected: (B,) rewards of the other answers.
        margin: (B,) or a float, or None for no margin.

    Returns:
        The scalar loss.
    """
    diff = r_chosen - r_rejected  # (B,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def kwise_ranking_loss(rewards: torch.Tensor, k_mask: torch.Tensor | None = None) -> torch.Tensor:
    """InstructGPT's K-wise loss: all C(K, 2) pairs of a prompt form one batch element.

    InstructGPT (arXiv 2203.02155, §3.5, eq. 1):

        loss = -1/C(K,2) * E_{(x, y_w, y_l)}[ log sigma(r(x, y_w) - r(x, y_l)) ]

    Each prompt's comparisons are averaged first (weight 1 / C(K, 2) each), then
    prompts are averaged, so a prompt with many answers does not outweigh one with
    few; the paper found that treating the pairs as independent samples overfits.

    Args:
        rewards: (B, K) rewards of each prompt's answers, best first.
        k_mask: (B, K) 1 on real answers, for prompts with fewer than K answers
            (the kept answers must still be in best-to-worst order); None when all
            K are real. A prompt with fewer than two real answers has no pairs and
            is left out of the mean (a batch with no pairs at all gives 0).

    Returns:
        The scalar loss.
    """
    K = rewards.shape[1]
    if k_mask is None:
        k_mask = torch.ones_like(rewards, dtype=torch.bool)
    real = k_mask.bool()  # (B, K)
    rewards = torch.where(real, rewards, 0.0)  # padding must not reach the gradient as NaN
    diffs = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (B, K, K): r_i - r_j
    i_better = torch.ones(K, K, dtype=torch.bool, device=rewards.device).triu(diagonal=1)
    pairs = i_better & real.unsqueeze(2) & real.unsqueeze(1)  # (B, K, K)
    pair_losses = torch.where(pairs, -F.logsigmoid(diffs), 0.0)  # (B, K, K)
    n_pairs = pairs.sum(dim=(1, 2))  # (B,)
    per_prompt = pair_losses.sum(dim=(1, 2)) / n_pairs.clamp(min=1)  # (B,), 0 with no pairs
    n_prompts = (n_pairs > 0).sum().clamp(min=1)
    return per_prompt.sum() / n_prompts


def soft_label_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                    prob_chosen: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy against a preference probability, for soft (AI) labels.

    With d = r_chosen - r_rejected and p the labeller's probability that ``chosen``
    is better: mean of -[p log sigma(d) + (1 - p) log sigma(-d)]. RLAIF (Lee et al.
    2023, arXiv 2309.00267, §2.3) trains on such soft labels. At p = 1 this is the
    Bradley-Terry loss.

    Args:
        r_chosen: (B,) rewards of the answers called "chosen".
        r_rejected: (B,) rewards of the other answers.
        prob_chosen: (B,) or a float, each in [0, 1].

    Returns:
        The scalar loss.
    """
    diff = r_chosen - r_rejected  # (B,)
    return -(prob_chosen * F.logsigmoid(diff) + (1 - prob_chosen) * F.logsigmoid(-diff)).mean()


@torch.no_grad()
def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs the reward model orders like the label; a tie counts 1/2.

    Counting ties as half makes a constant reward model score 0.5 (chance), not 0.

    Args:
        r_chosen, r_rejected: (B,) rewards. Returns a scalar in [0, 1].
    """
    wins = (r_chosen > r_rejected).float()  # (B,)
    ties = (r_chosen == r_rejected).float()  # (B,)
    return (wins + 0.5 * ties).mean()


@torch.no_grad()
def expected_calibration_error(probs: torch.Tensor, outcomes: torch.Tensor,
                               n_bins: int = 10) -> torch.Tensor:
    """Expected calibration error of pairwise preference probabilities.

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width confidence
    bins (Guo et al. 2017, arXiv 1706.04599, §2). For a pair the model predicts
    the answer it gives probability > 1/2, with confidence max(p, 1 - p) in
    [1/2, 1]; the bins split [1/2, 1] (not [0, 1], half of which no confidence can
    reach). A prediction at exactly p = 1/2 is right half the time. Because of this
    symmetry the result does not depend on which answer is called "chosen", so
    ``outcomes`` may be all 1 for chosen/rejected data.

    Args:
        probs: (N,) predicted probability that the first answer is better, e.g.
            ``sigmoid(r_chosen - r_rejected)``.
        outcomes: (N,) 1 if the first answer was in fact preferred, 0 if not; a soft
            label in [0, 1] counts as that probability of being preferred.
        n_bins: number of confidence bins.

    Returns:
        A float32 scalar in [0, 1]; 0 for a perfectly calibrated model.
    """
    probs, outcomes = probs.float(), outcomes.float()
    confidence = torch.maximum(probs, 1 - probs)  # (N,)
    correct = torch.where(probs > 0.5, outcomes, 1 - outcomes)  # (N,)
    correct = torch.where(probs == 0.5, 0.5, correct)
    bins = ((confidence - 0.5) * 2 * n_bins).long().clamp(max=n_bins - 1)  # (N,)
    # sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_sum_b - conf_sum_b| / N
    gap_per_bin = torch.zeros(n_bins, device=probs.device)
    gap_per_bin.index_add_(0, bins, correct - confidence)  # (n_bins,)
    return gap_per_bin.abs().sum() / probs.numel()
