"""Advantage estimators against hand-computed values (G=3, one zero-variance group)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxr1.rl import ADVANTAGE_ESTIMATORS, compute_advantages, dynamic_sampling_keep_mask, zero_variance_groups

# Three prompts, G=3: a mixed group, an all-equal group, a group with one outlier.
REWARDS = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0])
G = 3
# r - group mean: group means are 1/3, 1, 1.
CENTERED = [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0, -1.0, 2.0, -1.0]


def close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), atol=atol, rtol=1e-5)


def test_registry_names():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "reinforce_pp"}


def test_grpo_group_std_is_unbiased():
    # group 0: squared deviations 4/9+1/9+1/9 = 2/3, / (G-1) -> var 1/3, std 0.5773503 (+1e-4)
    # group 2: squared deviations 1+4+1 = 6, / 2 -> var 3, std 1.7320508 (+1e-4)
    adv, metrics = compute_advantages("grpo", REWARDS, G)
    close(adv, [1.1545006, -0.5772503, -0.5772503, 0, 0, 0, -0.5773169, 1.1546339, -0.5773169])
    close(metrics["zero_std_frac"], 1 / 3)


def test_grpo_batch_and_none_scaling():
    # batch: all 9 rewards, mean 7/9, sum of squares 13 - 49/9 = 68/9, unbiased var 68/72, std 0.9718253
    adv, _ = compute_advantages("grpo", REWARDS, G, scale_rewards="batch")
    close(adv, [0.6859238, -0.3429619, -0.3429619, 0, 0, 0, -1.0288856, 2.0577713, -1.0288856])
    adv, _ = compute_advantages("grpo", REWARDS, G, scale_rewards="none")
    close(adv, CENTERED)
    with pytest.raises(ValueError):
        compute_advantages("grpo", REWARDS, G, scale_rewards="token")


def test_dr_grpo():
    adv, _ = compute_advantages("dr_grpo", REWARDS, G)
    close(adv, CENTERED)


def test_rloo_leave_one_out_baseline():
    # group 0: 1 - mean(0,0) = 1, 0 - mean(1,0) = -0.5; group 2: 0 - mean(3,0) = -1.5, 3 - 0 = 3
    adv, _ = compute_advantages("rloo", REWARDS, G)
    close(adv, [1.0, -0.5, -0.5, 0, 0, 0, -1.5, 3.0, -1.5])


def test_reinforce_pp_batch_whitened():
    # centered values have batch mean 0 and population variance (6/9 + 6) / 9 = 60/81, std 0.8606630
    adv, _ = compute_advantages("reinforce_pp", REWARDS, G)
    close(adv, [0.7745967, -0.3872983, -0.3872983, 0, 0, 0, -1.1618950, 2.3237900, -1.1618950])


def test_num_generations_one_gives_zero_not_nan():
    r = jnp.array([1.0, 0.0, 2.0])
    for name in ("grpo", "dr_grpo", "rloo"):
        adv, metrics = compute_advantages(name, r, 1)
        close(adv, [0, 0, 0])
        close(metrics["zero_std_frac"], 1.0)


def test_dynamic_sampling_keep_mask():
    np.testing.assert_array_equal(zero_variance_groups(REWARDS, G), [False, True, False])
    np.testing.assert_array_equal(
        dynamic_sampling_keep_mask(REWARDS, G), [True, True, True, False, False, False, True, True, True]
    )


def test_bad_inputs():
    with pytest.raises(ValueError):
        compute_advantages("grpo", REWARDS, 4)  # 9 rows are not groups of 4
    with pytest.raises(ValueError):
        compute_advantages("ppo", REWARDS, G)


def test_jit():
    fn = jax.jit(lambda r: compute_advantages("grpo", r, G, scale_rewards="group"))
    adv, metrics = fn(REWARDS)
    close(adv, compute_advantages("grpo", REWARDS, G)[0])
    close(metrics["zero_std_frac"], 1 / 3)
