"""Clipped policy loss, KL estimators and micro-batch accumulation against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxr1.rl import compute_loss_normalizer, kl_penalty, policy_loss

# old = 0, so ratio = exp(logp). Row 0 has A = +1, row 1 has A = -2; row 1's last token is padding.
RATIOS = np.array([[1.5, 1.1, 0.5], [1.5, 0.7, 0.9]], np.float32)
LOGP = jnp.log(jnp.asarray(RATIOS))
OLD = jnp.zeros((2, 3))
ADV = jnp.array([1.0, -2.0])
MASK = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
# Per-token -min(r*A, clip(r, 0.8, 1.2)*A):
#   row 0: 1.5 -> -1.2 (clipped high), 1.1 -> -1.1, 0.5 -> -0.5 (below 1-eps with A>0: not clipped)
#   row 1: 1.5 -> 3.0 (above 1+eps with A<0: not clipped), 0.7 -> 1.6 (clipped low), [0.9 masked]


def close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), atol=atol, rtol=1e-5)


@pytest.mark.parametrize(
    "aggregation, kw, expected",
    [
        ("token_mean", {}, (-1.2 - 1.1 - 0.5 + 3.0 + 1.6) / 5),  # 0.36
        ("seq_mean_token_mean", {}, (-2.8 / 3 + 4.6 / 2) / 2),  # 0.6833333
        ("seq_mean_token_sum_norm", {"max_tokens": 4}, (-2.8 / 4 + 4.6 / 4) / 2),  # 0.225
        ("seq_mean_token_sum_norm", {}, (-2.8 / 3 + 4.6 / 3) / 2),  # max_tokens defaults to T = 3
    ],
)
def test_clipped_loss_per_aggregation(aggregation, kw, expected):
    loss, metrics = policy_loss(LOGP, OLD, ADV, MASK, aggregation=aggregation, **kw)
    close(loss, expected)
    close(metrics["clip_frac_high"], 1 / 5)
    close(metrics["clip_frac_low"], 1 / 5)
    close(metrics["clip_frac"], 2 / 5)
    close(metrics["ratio_mean"], (1.5 + 1.1 + 0.5 + 1.5 + 0.7) / 5)
    close(metrics["num_tokens"], 5)
    close(metrics["num_seqs"], 2)
    assert "kl" not in metrics


def test_clip_higher_dapo():
    # eps_high 0.28: row 0's first token is clipped at 1.28 instead of 1.2
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, epsilon_high=0.28)
    close(loss, (-1.28 - 1.1 - 0.5 + 3.0 + 1.6) / 5)


def test_gradient_zero_where_clipped():
    # d/dlogp of -r*A is -A*r on unclipped tokens, 0 on clipped and masked ones; / 5 tokens.
    grad = jax.grad(lambda lp: policy_loss(lp, OLD, ADV, MASK)[0])(LOGP)
    close(grad, [[0.0, -1.1 / 5, -0.5 / 5], [2 * 1.5 / 5, 0.0, 0.0]])


def test_padding_values_never_leak():
    # -inf / nan at masked positions, plus an all-padding row: same loss, finite gradient.
    logp = jnp.concatenate([LOGP.at[1, 2].set(-jnp.inf), jnp.full((1, 3), jnp.nan)])
    old = jnp.concatenate([OLD.at[1, 2].set(jnp.nan), jnp.full((1, 3), -jnp.inf)])
    ref = jnp.concatenate([OLD, jnp.full((1, 3), jnp.nan)])
    adv = jnp.array([1.0, -2.0, 5.0])
    mask = jnp.concatenate([MASK, jnp.zeros((1, 3))])
    for aggregation in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        fn = lambda lp: policy_loss(lp, old, adv, mask, ref_logprobs=ref, beta=0.1, aggregation=aggregation)
        (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
        ref_loss, _ = policy_loss(LOGP, OLD, ADV, MASK, ref_logprobs=OLD, beta=0.1, aggregation=aggregation)
        close(loss, ref_loss)
        assert np.isfinite(np.asarray(grad)).all() and (np.asarray(grad)[2] == 0).all()
        assert all(np.isfinite(np.asarray(v)) for v in metrics.values())


def test_fully_masked_batch_is_zero():
    mask = jnp.zeros((2, 3))
    loss, grad = jax.value_and_grad(lambda lp: policy_loss(lp, OLD, ADV, mask)[0])(LOGP)
    close(loss, 0.0)
    close(grad, np.zeros((2, 3)))


def test_kl_estimators():
    # log_r = ref - logp = -0.5 and +1.0
    logp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.5])
    close(kl_penalty(logp, ref, "k3"), [0.1065307, 0.7182818])  # e^-0.5 - 1 + 0.5, e - 1 - 1
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_kl_penalty_in_loss_on_policy():
    # old=None -> ratio 1, A = 0: the loss is beta * mean k3 over valid tokens.
    logp, ref = jnp.array([[-1.0, -2.0, 7.0]]), jnp.array([[-1.5, -1.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    fn = lambda lp: policy_loss(lp, None, jnp.zeros(1), mask, ref_logprobs=ref, beta=0.1)
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
    close(loss, 0.1 * (0.1065307 + 0.7182818) / 2)
    close(metrics["kl"], (0.1065307 + 0.7182818) / 2)
    close(metrics["ratio_mean"], 1.0)
    # d k3 / d logp = 1 - exp(ref - logp): 1 - e^-0.5 = 0.3934693, 1 - e = -1.7182818; * beta / 2
    close(grad, [[0.05 * 0.3934693, 0.05 * -1.7182818, 0.0]])
    # On-policy with A = 3 and beta = 0: loss -A, gradient -A / n_tokens per token.
    grad = jax.grad(lambda lp: policy_loss(lp, None, jnp.array([3.0]), mask)[0])(logp)
    close(grad, [[-1.5, -1.5, 0.0]])


def test_beta_needs_ref():
    policy_loss(LOGP, OLD, ADV, MASK, beta=0.0)  # no ref needed
    with pytest.raises(ValueError):
        policy_loss(LOGP, OLD, ADV, MASK, beta=0.04)


def test_gspo_sequence_ratio():
    # logp - old = [0.2, -0.1, (masked 5.0)] -> s = exp(0.05) = 1.0512711 on every valid token.
    logp, old = jnp.array([[0.2, -0.1, 5.0]]), jnp.zeros((1, 3))
    mask = jnp.array([[1.0, 1.0, 0.0]])
    fn = lambda lp, **kw: policy_loss(lp, old, jnp.array([1.0]), mask, importance_level="sequence", **kw)
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
    close(loss, -1.0512711)
    close(metrics["ratio_mean"], 1.0512711)
    close(metrics["clip_frac"], 0.0)
    # GSPO-token gradient: s * grad logp_t, / 2 tokens
    close(grad, [[-1.0512711 / 2, -1.0512711 / 2, 0.0]])
    # GSPO's own clip range (3e-4, 4e-4): the whole sequence is clipped high, no gradient.
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp, epsilon_low=3e-4, epsilon_high=4e-4)
    close(loss, -1.0004)
    close(metrics["clip_frac_high"], 1.0)
    close(grad, np.zeros((1, 3)))
    # Token-level on the same data: exp(0.2) = 1.2214 clips at 1.2, exp(-0.1) = 0.9048374 does not.
    loss, _ = policy_loss(logp, old, jnp.array([1.0]), mask)
    close(loss, (-1.2 - 0.9048374) / 2)


def test_gspo_negative_advantage_clipped_low():
    # seq log-ratio mean(-0.4, -0.2) = -0.3, s = 0.7408182 < 0.8 with A = -1: loss -(-0.8) = 0.8
    logp = jnp.array([[-0.4, -0.2]])
    old, mask = jnp.zeros((1, 2)), jnp.ones((1, 2))
    loss, metrics = policy_loss(logp, old, jnp.array([-1.0]), mask, importance_level="sequence")
    close(loss, 0.8)
    close(metrics["clip_frac_low"], 1.0)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_gradients_sum_to_full_batch(aggregation):
    rng = np.random.default_rng(0)
    n, t = 6, 5
    logp = jnp.asarray(rng.normal(-1.0, 0.3, (n, t)), jnp.float32)
    old = logp + jnp.asarray(rng.normal(0.0, 0.3, (n, t)), jnp.float32)
    ref = logp + jnp.asarray(rng.normal(0.0, 0.3, (n, t)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=n), jnp.float32)
    lengths = np.array([5, 1, 0, 3, 4, 2])  # uneven, one empty row
    mask = jnp.asarray(np.arange(t)[None, :] < lengths[:, None], jnp.float32)
    kw = dict(beta=0.05, aggregation=aggregation, max_tokens=t)

    def loss_fn(lp, sl, normalizer=None):
        out, _ = policy_loss(lp, old[sl], adv[sl], mask[sl], **kw, ref_logprobs=ref[sl], loss_normalizer=normalizer)
        return out

    full = jax.grad(loss_fn)(logp, slice(0, n))
    normalizer = compute_loss_normalizer(mask, aggregation)
    micro = [jax.grad(loss_fn)(logp[i : i + 2], slice(i, i + 2), normalizer) for i in range(0, n, 2)]
    close(jnp.concatenate(micro), full, atol=1e-6)
    # Without the full-batch normalizer the micro-batch losses are normalised locally and differ.
    local = [jax.grad(loss_fn)(logp[i : i + 2], slice(i, i + 2)) for i in range(0, n, 2)]
    assert not np.allclose(np.concatenate(local), np.asarray(full), atol=1e-4)


def test_jit_matches_eager():
    fn = lambda lp: policy_loss(lp, OLD, ADV, MASK, ref_logprobs=OLD, beta=0.04, kl_estimator="k2",
                                aggregation="seq_mean_token_mean", epsilon_high=0.28)
    (loss, metrics), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(LOGP)
    (loss_e, metrics_e), grad_e = jax.value_and_grad(fn, has_aux=True)(LOGP)
    close(loss, loss_e)
    close(grad, grad_e)
    close(metrics["kl"], metrics_e["kl"])


def test_bad_options():
    with pytest.raises(ValueError):
        policy_loss(LOGP, OLD, ADV, MASK, aggregation="sum")
    with pytest.raises(ValueError):
        policy_loss(LOGP, OLD, ADV, MASK, importance_level="token_seq")
    assert math.isclose(float(compute_loss_normalizer(MASK, "token_mean")), 5.0)
    assert math.isclose(float(compute_loss_normalizer(MASK, "seq_mean_token_mean")), 2.0)
