"""Clipped policy-gradient loss of the GRPO family (GRPO, DAPO, Dr. GRPO, GSPO) with a KL penalty.

Inputs are per completion token: logprobs / old_logprobs / ref_logprobs `[N, T]`, mask `[N, T]`
(1 on valid completion tokens), one advantage per completion `[N]`. Masked positions may hold
anything (padding, -inf): they are replaced by zeros before any arithmetic, so neither the loss
nor its gradient sees them.

Gradient accumulation: every aggregation mode is `numerator / normalizer`, where the numerator is
a sum over rows and the normalizer a count over the whole batch. Compute the normalizer once from
the full rollout's mask with `compute_loss_normalizer(mask, aggregation)`, pass it as
`loss_normalizer` for every micro-batch, and sum (do not average) the micro-batch gradients: the
sum equals the full-batch gradient. Under jit on a global (sharded) mask the count is global.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

Array = jnp.ndarray
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]

# exp() of a log-ratio beyond this is astronomically off-policy; clamping (as verl does) keeps
# exp finite so the masked-out min() below never meets inf * 0.
_MAX_LOG_RATIO = 20.0


# ---- KL estimators: name -> per-token estimate of KL(pi || pi_ref) from log_r = ref - logp
# (Schulman, "Approximating KL"). A new one is one entry here; config validation reads the names.
def _k3(log_r: Array) -> Array:
    log_r = jnp.clip(log_r, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[Array], Array]] = {
    "k1": lambda log_r: -log_r,                       # unbiased, high variance, can be negative
    "k2": lambda log_r: 0.5 * jnp.square(log_r),      # biased, low variance
    "k3": _k3,                                        # (r - 1) - log r: unbiased, >= 0; GRPO / TRL use it
}


def kl_penalty(logprobs: Array, ref_logprobs: Array, estimator: str = "k3") -> Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, by the KL_ESTIMATORS entry `estimator`."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {tuple(KL_ESTIMATORS)}, got {estimator!r}")
    return KL_ESTIMATORS[estimator](ref_logprobs - logprobs)


# ---- loss aggregations: name -> (numerator over rows, normalizer over the whole batch). The loss is
# numerator / normalizer, so micro-batch numerators add up to the full batch's (see the module docstring).
class AggregationFns(NamedTuple):
    numerator: Callable[[Array, Array, int], Array]   # (per-token loss [N, T], mask [N, T], max_tokens) -> []
    normalizer: Callable[[Array], Array]              # mask [N, T] -> []


def _row_sums(per_token: Array, mask: Array) -> Array:
    return jnp.sum(per_token * mask, axis=-1)


def _valid_rows(mask: Array) -> Array:
    # Rows with no valid token (static-shape padding) are not counted, so they do not dilute the loss.
    return jnp.sum(jnp.any(mask > 0, axis=-1).astype(jnp.float32))


AGGREGATIONS: dict[str, AggregationFns] = {
    # sum over valid tokens / valid tokens (DAPO token-level loss)
    "token_mean": AggregationFns(lambda x, m, _: jnp.sum(_row_sums(x, m)), jnp.sum),
    # per-row token mean, averaged over rows (original GRPO)
    "seq_mean_token_mean": AggregationFns(
        lambda x, m, _: jnp.sum(_row_sums(x, m) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)), _valid_rows),
    # per-row token sum / max_tokens, averaged over rows (Dr. GRPO's constant normaliser)
    "seq_mean_token_sum_norm": AggregationFns(lambda x, m, max_tokens: jnp.sum(_row_sums(x, m)) / float(max_tokens),
                                              _valid_rows),
}


def _aggregation(name: str) -> AggregationFns:
    if name not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {tuple(AGGREGATIONS)}, got {name!r}")
    return AGGREGATIONS[name]


def compute_loss_normalizer(mask: Array, aggregation: Aggregation) -> Array:
    """The denominator `policy_loss` divides by: valid tokens (token_mean) or non-empty rows (seq_*)."""
    return _aggregation(aggregation).normalizer(jnp.asarray(mask, jnp.float32))


def _masked_mean(x: Array, mask: Array) -> Array:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _log_ratio(logprobs: Array, old_logprobs: Array, mask: Array, importance_level: str) -> Array:
    token_lr = logprobs - old_logprobs
    if importance_level == "token":
        return token_lr
    if importance_level == "sequence":
        # GSPO (Zheng et al. 2025): s_i = exp(mean_t(logp - old)), the length-normalised sequence
        # ratio. GSPO-token form: log s_it = sg(log s_i) + logp_t - sg(logp_t); its value is s_i at
        # every token and its gradient is s_i * grad logp_t, so clipping stays per sequence while
        # the gradient flows through each token.
        seq_lr = jnp.sum(token_lr * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
        return jax.lax.stop_gradient(seq_lr)[:, None] + logprobs - jax.lax.stop_gradient(logprobs)
    raise ValueError(f"importance_level must be 'token' or 'sequence', got {importance_level!r}")


def policy_loss(
    logprobs: Array,
    old_logprobs: Array | None,
    advantages: Array,
    mask: Array,
    *,
    ref_logprobs: Array | None = None,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    importance_level: Literal["token", "sequence"] = "token",
    aggregation: Aggregation = "token_mean",
    max_tokens: int | None = None,
    beta: float = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
    loss_normalizer: Array | float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Clipped surrogate + beta * KL, aggregated; returns (scalar loss, metrics).

    per-token loss = -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A) + beta * KL.
    DAPO's clip-higher is epsilon_high=0.28; GSPO is importance_level="sequence" with small epsilons.
    old_logprobs=None means on-policy (one update per rollout): old = stop_gradient(logprobs).

    aggregation (numerator / normalizer; the default normalizer is compute_loss_normalizer(mask, aggregation)):
      token_mean               sum over valid tokens / number of valid tokens (DAPO token-level loss)
      seq_mean_token_mean      per-row token mean, averaged over rows (original GRPO)
      seq_mean_token_sum_norm  per-row token sum / max_tokens, averaged over rows (Dr. GRPO's constant
                               normaliser; pass the generation's max_new_tokens, default T)
    Pass `loss_normalizer` computed on the full batch when this call sees one micro-batch of it.

    metrics (over valid tokens, no gradient): clip_frac_low / clip_frac_high / clip_frac (tokens
    where clipping removed the gradient: ratio < 1-eps_low with A < 0, ratio > 1+eps_high with A > 0),
    ratio_mean, kl (only when ref_logprobs is given), num_tokens, num_seqs (for weighting across
    micro-batches).
    """
    agg = _aggregation(aggregation)
    mask = jnp.asarray(mask, jnp.float32)
    valid = mask > 0
    # Zero out masked positions first: jnp.where also zeroes their gradient, and padding values
    # such as -inf would otherwise turn into NaN through 0 * inf.
    logprobs = jnp.where(valid, logprobs.astype(jnp.float32), 0.0)
    if old_logprobs is None:
        old_logprobs = jax.lax.stop_gradient(logprobs)
    old_logprobs = jnp.where(valid, old_logprobs.astype(jnp.float32), 0.0)
    adv = jnp.asarray(advantages, jnp.float32)[:, None]

    log_ratio = _log_ratio(logprobs, old_logprobs, mask, importance_level)
    ratio = jnp.exp(jnp.clip(log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -jnp.minimum(ratio * adv, clipped_ratio * adv)

    metrics: dict[str, Array] = {}
    if ref_logprobs is not None:
        ref_logprobs = jnp.where(valid, ref_logprobs.astype(jnp.float32), 0.0)
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl), mask)
        if beta != 0.0:
            per_token = per_token + beta * kl
    elif beta != 0.0:
        raise ValueError("beta != 0 needs ref_logprobs")

    row_tokens = jnp.sum(mask, axis=-1)
    numerator = agg.numerator(per_token, mask, max_tokens if max_tokens is not None else mask.shape[-1])
    if loss_normalizer is None:
        loss_normalizer = agg.normalizer(mask)
    # An all-padding batch gives 0 / 1 = 0 rather than 0 / 0.
    loss = numerator / jnp.maximum(jnp.asarray(loss_normalizer, jnp.float32), 1.0)

    ratio_sg = jax.lax.stop_gradient(ratio)
    low = (ratio_sg < 1.0 - epsilon_low) & (adv < 0)
    high = (ratio_sg > 1.0 + epsilon_high) & (adv > 0)
    metrics.update(
        clip_frac_low=_masked_mean(low.astype(jnp.float32), mask),
        clip_frac_high=_masked_mean(high.astype(jnp.float32), mask),
        clip_frac=_masked_mean((low | high).astype(jnp.float32), mask),
        ratio_mean=_masked_mean(ratio_sg, mask),
        num_tokens=jnp.sum(mask),
        num_seqs=jnp.sum((row_tokens > 0).astype(jnp.float32)),
    )
    return loss, metrics
