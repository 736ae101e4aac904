"""Per-token log-probabilities and entropies from a causal LM's logits.

Alignment convention: ``logits[:, t]`` is the distribution that produced
``labels[:, t]``; the caller does the usual shift (``logits[:, :-1]`` against
``input_ids[:, 1:]``) before calling.
"""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each label under ``softmax(logits / temperature)``.

    log p(y) = z_y - logsumexp(z), with z = logits / temperature. Gathering z_y and
    subtracting the logsumexp avoids keeping a full (B, T, V) log-softmax copy
    around, which for a 50k-150k vocabulary is most of the memory of a PPO step.

    The temperature must be the one used for sampling, or the PPO ratio compares
    the policy with a different distribution than the one that generated the
    rollout ("The N implementation details of RLHF with PPO", Huang et al. 2024,
    "scale the logits by sampling temperature").

    Precision follows the input dtype; pass float32 logits when the result feeds
    a PPO ratio (bf16 log-probs are off by ~1e-2).

    Args:
        logits: (B, T, V) unnormalised scores.
        labels: (B, T) token ids (int64).
        temperature: > 0.

    Returns:
        (B, T) log-probabilities.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature != 1.0:  # skip the (B, T, V) copy the division would make
        logits = logits / temperature
    label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return label_logits - torch.logsumexp(logits, dim=-1)  # (B, T)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at every position.

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v, which needs the
    probabilities but not a separate log-softmax tensor.

    Args:
        logits: (B, T, V), finite (a -inf logit would make ``p_v * z_v`` NaN).
        temperature: > 0.

    Returns:
        (B, T) entropies in nats.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature != 1.0:
        logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, T)
