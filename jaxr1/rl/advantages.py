"""Group-relative advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++), registered by name.

Rewards arrive flat, `[B*G]`, grouped by prompt: rows i*G .. i*G+G-1 are prompt i's G samples
(the sampler's layout). Every estimator has one signature, `fn(rewards [B*G], num_generations, **options)
-> [B*G]`, one scalar advantage per completion which the policy loss broadcasts over its tokens;
`options` are the `rl.*` config keys it declares when registered. A new estimator is one decorated
function here: the trainer and config validation read the registry.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax.numpy as jnp

Array = jnp.ndarray
Estimator = Callable[..., Array]

ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}   # estimator -> the rl.* config keys passed to it as keywords
SCALE_REWARDS = ("group", "batch", "none")


def register_advantage_estimator(name: str, *, options: tuple[str, ...] = ()):
    def register(fn: Estimator) -> Estimator:
        ADVANTAGE_ESTIMATORS[name] = fn
        _OPTIONS[name] = tuple(options)
        return fn
    return register

# TRL adds 1e-4 to the std before dividing; matching it keeps our advantages comparable to TRL's.
DEFAULT_EPS = 1e-4


def _grouped(rewards: Array, num_generations: int) -> Array:
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or num_generations < 1 or rewards.shape[0] % num_generations:
        raise ValueError(f"rewards must be flat [B*G] with G={num_generations} dividing it; got shape {rewards.shape}")
    return rewards.reshape(-1, num_generations)


def _unbiased_std(x: Array, axis: int | None) -> Array:
    # torch.Tensor.std() (which TRL uses) is the unbiased (n-1) estimator; a single sample has no
    # spread, so n=1 gives 0 rather than torch's NaN (TRL special-cases it to 0 as well).
    n = x.size if axis is None else x.shape[axis]
    mean = jnp.mean(x, axis=axis, keepdims=True)
    ss = jnp.sum(jnp.square(x - mean), axis=axis)
    return jnp.sqrt(ss / max(n - 1, 1))


@register_advantage_estimator("grpo", options=("scale_rewards",))
def grpo(
    rewards: Array,
    num_generations: int,
    *,
    scale_rewards: Literal["group", "batch", "none"] = "group",
    eps: float = DEFAULT_EPS,
) -> Array:
    """GRPO (DeepSeekMath): A_i = (r_i - mean(group)) / (std + eps), with TRL's `scale_rewards` choice.

    std is the unbiased (n-1) std, as TRL's torch `.std()`; "group" uses the prompt's group std,
    "batch" the std of all B*G rewards (the mean stays per group, as in TRL), "none" skips scaling
    (which is exactly Dr. GRPO).
    """
    g = _grouped(rewards, num_generations)
    centered = g - jnp.mean(g, axis=1, keepdims=True)
    if scale_rewards == "group":
        std = _unbiased_std(g, axis=1)[:, None]
    elif scale_rewards == "batch":
        std = _unbiased_std(g, axis=None)
    elif scale_rewards == "none":
        return centered.reshape(-1)
    else:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    return (centered / (std + eps)).reshape(-1)


@register_advantage_estimator("dr_grpo")
def dr_grpo(rewards: Array, num_generations: int) -> Array:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean(group).

    Dividing by the group std up-weights near-unanimous (too easy / too hard) prompts; Dr. GRPO drops it.
    """
    g = _grouped(rewards, num_generations)
    return (g - jnp.mean(g, axis=1, keepdims=True)).reshape(-1)


@register_advantage_estimator("rloo")
def rloo(rewards: Array, num_generations: int) -> Array:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean of the other G-1 rewards of the group.

    Equals G/(G-1) * (r_i - group mean); the leave-one-out baseline keeps the estimate unbiased.
    G=1 has no other sample to compare with, so the advantage is 0.
    """
    g = _grouped(rewards, num_generations)
    if num_generations == 1:
        return jnp.zeros_like(g).reshape(-1)
    others_mean = (jnp.sum(g, axis=1, keepdims=True) - g) / (num_generations - 1)
    return (g - others_mean).reshape(-1)


@register_advantage_estimator("reinforce_pp")
def reinforce_pp(rewards: Array, num_generations: int, *, eps: float = 1e-8) -> Array:
    """REINFORCE++-baseline (Hu et al. 2025; OpenRLHF `reinforce_baseline`), outcome reward only.

    1. subtract the prompt's group mean: a_i = r_i - mean(group);
    2. whiten over the whole batch: A_i = (a_i - mean_batch(a)) / (std_batch(a) + eps), with the
       population (n) std over all B*G completions.
    OpenRLHF whitens over tokens (each completion weighted by its length); we whiten over
    completions, which keeps advantages independent of response length (one scalar per completion).
    """
    a = dr_grpo(rewards, num_generations)
    mean = jnp.mean(a)
    std = jnp.sqrt(jnp.mean(jnp.square(a - mean)))
    return (a - mean) / (std + eps)


def zero_variance_groups(rewards: Array, num_generations: int) -> Array:
    """[B] bool: groups whose G rewards are all equal (no learning signal under group baselines)."""
    g = _grouped(rewards, num_generations)
    # Exact comparison: rewards are verifier outputs, and DAPO's criterion is "not all equal".
    return jnp.max(g, axis=1) == jnp.min(g, axis=1)


def dynamic_sampling_keep_mask(rewards: Array, num_generations: int) -> Array:
    """[B*G] bool, True for rows of groups with non-zero reward variance (DAPO dynamic sampling).

    DAPO drops prompts whose samples are all correct or all wrong (advantage 0 everywhere) and
    keeps sampling until the batch is full; the per-group view is `mask[::num_generations]`.
    """
    keep = ~zero_variance_groups(rewards, num_generations)
    return jnp.repeat(keep, num_generations)


def _check(name: str) -> None:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose from {sorted(ADVANTAGE_ESTIMATORS)}")


def advantage_options(name: str, rl) -> dict:
    """The keyword options estimator `name` declared, read from an RLConfig."""
    _check(name)
    return {k: getattr(rl, k) for k in _OPTIONS[name]}


def compute_advantages(name: str, rewards: Array, num_generations: int, **options) -> tuple[Array, dict[str, Array]]:
    """Runs the estimator registered as `name`; returns (advantages [B*G] float32, metrics).

    metrics["zero_std_frac"] is the fraction of groups whose rewards are all equal.
    """
    _check(name)
    advantages = ADVANTAGE_ESTIMATORS[name](rewards, num_generations, **options)
    metrics = {"zero_std_frac": jnp.mean(zero_variance_groups(rewards, num_generations).astype(jnp.float32))}
    return advantages, metrics
