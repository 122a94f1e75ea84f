"""Model-agnostic RL math: advantage estimators, the clipped policy loss, chunked token log-probs."""

from jaxr1.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    dynamic_sampling_keep_mask,
    zero_variance_groups,
)
from jaxr1.rl.logprobs import token_logprobs
from jaxr1.rl.losses import compute_loss_normalizer, kl_penalty, policy_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "compute_advantages",
    "compute_loss_normalizer",
    "dynamic_sampling_keep_mask",
    "kl_penalty",
    "policy_loss",
    "token_logprobs",
    "zero_variance_groups",
]
