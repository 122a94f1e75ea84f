"""The attention entry point: splash (Pallas interpret mode on CPU) and the segment-id path against the XLA
reference, forward and gradients, GQA heads; resolve_attention's choices and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxr1.errors import UserError
from jaxr1.ops.attention import attention, kernel_block, resolve_attention, segment_mask

B, H, HKV, D = 2, 4, 2, 64


def qkv(t, s=None, d=D, seed=0):
    s = t if s is None else s
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, t, H, d)), jax.random.normal(kk, (B, s, HKV, d)),
            jax.random.normal(kv, (B, s, HKV, d)))


def left_right_padding(t):
    seg = np.ones((B, t), np.int32)
    seg[0, :40] = 0          # left padding (a prompt)
    seg[1, t - 30:] = 0      # right padding (a completion)
    seg[1, :5] = 0           # and both
    return jnp.asarray(seg)


def two_segments(t):
    seg = np.zeros((B, t), np.int32)
    seg[:, :50] = 1
    seg[:, 50:t - 10] = 2    # two images in one row, then padding
    seg[1, :] = np.where(np.arange(t) < 90, 3, 7)   # ids need not be 1, 2
    return jnp.asarray(seg)


def run(impl, q, k, v, seg_q, seg_kv, causal):
    return attention(q, k, v, q_segment_ids=seg_q, kv_segment_ids=seg_kv, causal=causal, implementation=impl)


def grads(impl, q, k, v, seg_q, seg_kv, causal):
    valid = (seg_q != 0)[:, :, None, None]
    w = jax.random.normal(jax.random.key(9), q.shape)

    def loss(q, k, v):
        return jnp.sum(jnp.where(valid, run(impl, q, k, v, seg_q, seg_kv, causal), 0.0) * w)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


CASES = {
    "causal-padding": (128, left_right_padding, True),
    "vision-two-segments": (128, two_segments, False),
    "unaligned-length-causal": (100, left_right_padding, True),   # padded to 128 inside the wrapper
}


@pytest.mark.parametrize("case", list(CASES))
def test_splash_matches_xla_forward_and_gradients(case):
    t, make_seg, causal = CASES[case]
    q, k, v = qkv(t)
    seg = make_seg(t)
    valid = np.asarray(seg != 0)
    ref = run("xla", q, k, v, seg, seg, causal)
    out = run("splash", q, k, v, seg, seg, causal)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert np.isfinite(np.asarray(out)).all()                     # padding rows too
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=2e-5, rtol=1e-5)
    for name, g, gr in zip("qkv", grads("splash", q, k, v, seg, seg, causal), grads("xla", q, k, v, seg, seg, causal)):
        assert np.isfinite(np.asarray(g)).all(), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(gr), atol=5e-5, rtol=1e-4, err_msg=name)


def test_splash_queries_shorter_than_keys_are_bottom_right_causal():
    q, k, v = qkv(128, 256)
    seg_kv = jnp.ones((B, 256), jnp.int32).at[0, :70].set(0)
    seg_q = jnp.ones((B, 128), jnp.int32)
    ref = run("xla", q, k, v, seg_q, seg_kv, True)
    out = run("splash", q, k, v, seg_q, seg_kv, True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=1e-5)


def test_segment_ids_equal_the_dense_mask_path():
    q, k, v = qkv(64)
    seg = left_right_padding(64 + 40)[:, 40:]
    mask = segment_mask(seg, seg, True)
    i, j = np.arange(64)[:, None], np.arange(64)[None, :]
    np.testing.assert_array_equal(np.asarray(mask[0]), (j <= i) & (np.asarray(seg[0])[:, None] == np.asarray(seg[0])[None, :]))
    np.testing.assert_allclose(np.asarray(attention(q, k, v, mask)),
                               np.asarray(run("xla", q, k, v, seg, seg, True)), rtol=1e-6)
    with pytest.raises(ValueError):
        attention(q, k, v, mask, q_segment_ids=seg, kv_segment_ids=seg)


def test_xla_padding_rows_are_finite_with_finite_gradients():
    q, k, v = qkv(32)
    seg = jnp.zeros((B, 32), jnp.int32).at[:, 8:].set(1)
    mask = segment_mask(seg, seg, True) & (seg[:, :, None] != 0)     # padding rows attend nothing at all
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, mask), q, k, v)
    assert np.isfinite(np.asarray(out)).all()
    assert all(np.isfinite(np.asarray(g)).all() for g in vjp(jnp.ones_like(out)))


def test_cudnn_roll_helpers_restore_rows():
    from jaxr1.ops.attention import _roll_rows, _run_bounds
    seg = jnp.asarray([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.int32)
    valid, start, length = _run_bounds(seg)
    assert start.tolist() == [2, 0, 0] and length.tolist() == [3, 4, 0]
    x = jnp.arange(18).reshape(3, 6)
    rolled = _roll_rows(x, start)
    assert rolled[0, :3].tolist() == [2, 3, 4]
    np.testing.assert_array_equal(np.asarray(_roll_rows(rolled, -start)), np.asarray(x))


def test_resolve_auto_per_backend():
    assert resolve_attention("auto", platform="tpu", dtype=jnp.bfloat16, head_dim=128) == "splash"
    assert resolve_attention("auto", platform="gpu", dtype=jnp.bfloat16, head_dim=128) == "cudnn"
    assert resolve_attention("auto", platform="cuda", dtype=jnp.float16, head_dim=64) == "cudnn"
    assert resolve_attention("auto", platform="gpu", dtype=jnp.float32, head_dim=128) == "xla"
    assert resolve_attention("auto", platform="gpu", dtype=jnp.bfloat16, head_dim=260) == "xla"
    assert resolve_attention("auto", platform="cpu", dtype=jnp.bfloat16, head_dim=128) == "xla"
    assert resolve_attention("xla", platform="tpu", dtype=jnp.float32, head_dim=80) == "xla"
    assert resolve_attention("splash", platform="tpu", dtype=jnp.float32, head_dim=128) == "splash"
    assert resolve_attention("splash", platform="cpu", dtype=jnp.float32, head_dim=64, allow_interpret=True) == "splash"
    assert resolve_attention("cudnn", platform="gpu", dtype=jnp.bfloat16, head_dim=128) == "cudnn"


@pytest.mark.parametrize("name,platform,dtype,head_dim,hint", [
    ("cudnn", "gpu", jnp.float32, 128, "bfloat16"),
    ("cudnn", "gpu", jnp.bfloat16, 260, "xla"),
    ("cudnn", "tpu", jnp.bfloat16, 128, "auto"),
    ("splash", "cpu", jnp.float32, 128, "auto"),
    ("splash", "gpu", jnp.bfloat16, 128, "auto"),
    ("splash", "tpu", jnp.bfloat16, 80, "xla"),
    ("flash", "tpu", jnp.bfloat16, 128, "auto"),
])
def test_resolve_explicit_kernel_that_cannot_serve_is_a_user_error(name, platform, dtype, head_dim, hint):
    with pytest.raises(UserError) as e:
        resolve_attention(name, platform=platform, dtype=dtype, head_dim=head_dim)
    msg = str(e.value)
    assert "model.attention" in msg and hint in msg and "\n" not in msg


def test_kernel_block():
    assert kernel_block("xla") == 1 and kernel_block("cudnn") == 1 and kernel_block("splash") == 128


def test_length_buckets_are_kernel_block_multiples():
    """What a kernel attends over: prompt-length buckets (sampler prefill, the training prompts' self-attention)
    and patch buckets (the vision slots) are multiples of splash's block from 128 up, so the wrapper pads
    nothing there (shorter ones it pads to one block)."""
    from jaxr1.models.inputs import next_bucket
    from jaxr1.sampling.buckets import bucket_prompt_length
    block = kernel_block("splash")
    assert all(bucket_prompt_length(n) % block == 0 for n in range(block, 6000))
    assert all(next_bucket(n, 64) % block == 0 for n in range(block, 20000, 7))


def test_auto_runs_on_this_backend():
    q, k, v = qkv(16)
    seg = jnp.ones((B, 16), jnp.int32)
    np.testing.assert_allclose(np.asarray(run("auto", q, k, v, seg, seg, True)),
                               np.asarray(run("xla", q, k, v, seg, seg, True)), rtol=1e-6)


def test_prefix_attention_query_blocks_equal_one_block():
    """Causal query blocks (each reading own keys up to its end) give the one-block result and gradients,
    rows packed with segments of two prompts, left-padded prompts."""
    from jaxr1.ops.attention import causal_query_block, prefix_attention
    r, t, p, h, hkv, d = 2, 256, 24, 4, 2, 16
    ks = jax.random.split(jax.random.key(3), 5)
    q = jax.random.normal(ks[0], (r, t, h, d))
    k, v = (jax.random.normal(kk, (r, t, hkv, d)) for kk in ks[1:3])
    pk, pv = (jax.random.normal(kk, (3, p, hkv, d)) for kk in ks[3:5])
    p_valid = jnp.asarray(np.arange(p)[None] >= np.array([[0], [5], [11]]))
    seg = np.zeros((r, t), np.int32)
    seg[0, :100], seg[0, 100:230] = 1, 2          # row 0: two completions, padding after 230
    seg[1, :40], seg[1, 40:256] = 1, 2
    tok_prompt = np.where(seg == 2, 1, 0)
    tok_prompt[1] = np.where(seg[1] == 1, 2, 1)
    row_prompt = jnp.asarray([[0, 1], [2, 1]])
    real = jnp.asarray(seg > 0)[..., None, None]

    def out(qb, *x):
        o = prefix_attention(*x, p_valid, jnp.asarray(seg), row_prompt, jnp.asarray(tok_prompt), query_block=qb)
        return jnp.where(real, o, 0.0)
    assert causal_query_block(t) == 64 and causal_query_block(448) == 64 and causal_query_block(96) == 96
    assert causal_query_block(2048) == 128
    args = (q, k, v, pk, pv)
    np.testing.assert_allclose(out(None, *args), out(t, *args), atol=1e-5)
    loss = lambda qb: jax.grad(lambda *x: (out(qb, *x) ** 2).sum(), argnums=(0, 1, 2, 3, 4))(*args)
    for a, b in zip(loss(None), loss(t)):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("t,s", [(256, 256), (256, 320)])
def test_xla_causal_query_blocks_equal_the_dense_mask(t, s):
    """Segment ids + causal on the XLA path run in causal query blocks: the same outputs and gradients as one
    softmax under the dense mask, left/right padding and two segments, queries at the end of a longer cache."""
    from jaxr1.ops.attention import _attention_xla, causal_blocks
    assert len(causal_blocks(t)) == 4
    q, k, v = qkv(t, s, seed=5)
    for seg in (left_right_padding(s), two_segments(s)):
        seg_q = seg[:, s - t:]
        real = (seg_q > 0)[..., None, None]
        blocked = lambda q, k, v: jnp.where(real, run("xla", q, k, v, seg_q, seg, True), 0.0)
        dense = lambda q, k, v: jnp.where(real, _attention_xla(q, k, v, segment_mask(seg_q, seg, True), None), 0.0)
        np.testing.assert_allclose(blocked(q, k, v), dense(q, k, v), atol=1e-5)
        grads = [jax.grad(lambda *x: (f(*x) ** 2).sum(), argnums=(0, 1, 2))(q, k, v) for f in (blocked, dense)]
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, atol=1e-4)
