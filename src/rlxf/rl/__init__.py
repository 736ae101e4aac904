"""The pure math of RLHF: small functions over torch tensors, each citing its source.

- ``logprobs``: per-token log-probs and entropies from logits.
- ``kl``: KL estimators k1/k2/k3, KL-penalised rewards, fixed/adaptive KL controllers.
- ``masked``: mean, variance and whitening over the real tokens of a padded batch.
- ``advantages``: GAE.
- ``ppo_loss``: clipped policy and value losses, PPO-ptx LM loss.
- ``reward_loss``: Bradley-Terry, K-wise and soft-label losses; accuracy, calibration.
"""

from rlxf.rl.advantages import gae
from rlxf.rl.kl import (AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3,
                        penalised_rewards)
from rlxf.rl.logprobs import entropy_from_logits, logprobs_from_logits
from rlxf.rl.masked import masked_mean, masked_var, masked_whiten
from rlxf.rl.ppo_loss import (PolicyLossOut, ValueLossOut, lm_loss, policy_loss, value_loss,
                              value_loss_unclipped)
from rlxf.rl.reward_loss import (bradley_terry_loss, expected_calibration_error,
                                 kwise_ranking_loss, pairwise_accuracy, soft_label_loss)

__all__ = [
    "AdaptiveKLController", "FixedKLController", "PolicyLossOut", "ValueLossOut",
    "bradley_terry_loss", "entropy_from_logits", "expected_calibration_error", "gae",
    "kl_k1", "kl_k2", "kl_k3", "kwise_ranking_loss", "lm_loss", "logprobs_from_logits",
    "masked_mean", "masked_var", "masked_whiten", "pairwise_accuracy", "penalised_rewards",
    "policy_loss", "soft_label_loss", "value_loss", "value_loss_unclipped",
]
