"""Chunked token log-probs / entropy: hand values, parity with full logits (values and gradients), memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxr1.rl import token_logprobs


def close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), atol=atol, rtol=1e-5)


def naive(hidden, w, targets, temperature=1.0):
    logits = jnp.einsum("ntd,dv->ntv", hidden, w, precision=jax.lax.Precision.HIGHEST) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def test_hand_values_two_token_vocab():
    # W = I, hidden (ln 3, 0): p = (3/4, 1/4). At temperature 2, p0 = sqrt3 / (sqrt3 + 1) = 0.6339746.
    hidden = jnp.array([[[math.log(3.0), 0.0], [math.log(3.0), 0.0]]])
    targets = jnp.array([[0, 1]])
    logp, ent = token_logprobs(hidden, jnp.eye(2), targets, chunk_size=1)
    close(logp, [[-0.2876821, -1.3862944]])  # ln 0.75, ln 0.25
    close(ent, [[0.5623351, 0.5623351]])  # -(0.75 ln 0.75 + 0.25 ln 0.25)
    logp, ent = token_logprobs(hidden, jnp.eye(2), targets, temperature=2.0)
    close(logp, [[-0.4557464, math.log(1 - 0.6339746)]])
    close(ent, [[0.6568064, 0.6568064]])


@pytest.mark.parametrize("chunk_size, transpose_w", [(3, False), (16, True)])
def test_matches_full_logits_values_and_grads(chunk_size, transpose_w):
    # T=7 is not a multiple of 3 (padding path); chunk 16 > T is a single chunk.
    rng = np.random.default_rng(0)
    n, t, d, v = 2, 7, 8, 11
    hidden = jnp.asarray(rng.normal(size=(n, t, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, (n, t)), jnp.int32)
    g_lp = jnp.asarray(rng.normal(size=(n, t)), jnp.float32)
    g_ent = jnp.asarray(rng.normal(size=(n, t)), jnp.float32)
    w_in = w.T if transpose_w else w

    def chunked_obj(h, w_):
        lp, ent = token_logprobs(h, w_, targets, chunk_size=chunk_size, temperature=0.7, transpose_w=transpose_w)
        return jnp.sum(g_lp * lp) + jnp.sum(g_ent * ent), (lp, ent)

    def naive_obj(h, w_):
        lp, ent = naive(h, w_.T if transpose_w else w_, targets, temperature=0.7)
        return jnp.sum(g_lp * lp) + jnp.sum(g_ent * ent), (lp, ent)

    (_, (lp, ent)), grads = jax.value_and_grad(chunked_obj, argnums=(0, 1), has_aux=True)(hidden, w_in)
    (_, (lp_n, ent_n)), grads_n = jax.value_and_grad(naive_obj, argnums=(0, 1), has_aux=True)(hidden, w_in)
    assert lp.dtype == jnp.float32 and lp.shape == (n, t) and ent.shape == (n, t)
    close(lp, lp_n, atol=1e-5)
    close(ent, ent_n, atol=1e-5)
    close(grads[0], grads_n[0], atol=1e-4)
    close(grads[1], grads_n[1], atol=1e-4)


def test_bfloat16_inputs_give_float32_outputs():
    hidden = jnp.ones((1, 4, 8), jnp.bfloat16)
    w = jnp.ones((8, 16), jnp.bfloat16)
    logp, ent = token_logprobs(hidden, w, jnp.zeros((1, 4), jnp.int32), chunk_size=2)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    close(logp, np.full((1, 4), -math.log(16.0)))  # equal logits: uniform over 16
    close(ent, np.full((1, 4), math.log(16.0)))


def test_bad_inputs():
    with pytest.raises(ValueError):
        token_logprobs(jnp.ones((1, 2, 4)), jnp.ones((4, 8)), jnp.zeros((1, 2), jnp.int32), temperature=0.0)
    with pytest.raises(ValueError):
        token_logprobs(jnp.ones((1, 2, 4)), jnp.ones((4, 8)), jnp.zeros((1, 2), jnp.int32), transpose_w=True)


def test_memory_stays_chunk_sized():
    # Forward + backward of a 4 x 1024 x 32768 case compiled, not run. Full fp32 logits are 512 MiB;
    # chunks of 32 positions hold 16 MiB each, so temp memory must stay a small fraction of that.
    n, t, d, v = 4, 1024, 64, 32768
    full_logits_bytes = n * t * v * 4
    args = (
        jax.ShapeDtypeStruct((n, t, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n, t), jnp.int32),
    )

    def objective(h, w, tgt):
        lp, ent = token_logprobs(h, w, tgt, chunk_size=32)
        return jnp.sum(lp) + jnp.sum(ent)

    compiled = jax.jit(jax.grad(objective, argnums=(0, 1))).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    mib = 2**20
    assert temp < 0.2 * full_logits_bytes, f"temp {temp / mib:.0f} MiB vs full logits {full_logits_bytes / mib:.0f} MiB"
