"""Sampled rollouts on the model: log-probs vs teacher forcing, allowed sets, G samples from one prefill,
determinism, and no recompilation inside a bucket."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxr1.models.qwen2_5_vl.text import TextDecoder
from jaxr1.models.qwen2_5_vl.vision import VisionTower
from jaxr1.sampling import CALLS, compile_count, generate
from tests import hf_tiny
from tests.sampling.prompts import image_batch, repeat_images, text_batch
from tests.sampling.test_functions import allowed_and_probs


def teacher_forced_logits(model, batch, out, n):
    """[B*n, max_new, V] logits that predict each generated token, from one full forward over prompt + tokens."""
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    prompts = [row[m.astype(bool)] for row, m in zip(batch["input_ids"], batch["attention_mask"])]
    rows = [list(prompts[r // n]) + list(tokens[r, :lengths[r]]) for r in range(len(tokens))]
    ids, mask = hf_tiny.left_pad(rows)
    pv, thw = repeat_images(batch, n)
    logits = np.asarray(model(ids, mask, pv, thw))
    t = ids.shape[1]
    out_logits = np.zeros((*tokens.shape, logits.shape[-1]), np.float32)
    for r, length in enumerate(lengths):
        out_logits[r, :length] = logits[r, t - length - 1: t - 1]
    return out_logits


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def sampled_images(tiny_pair, monkeypatch_module):
    """One temperature-1 run with G=3 on the image batch, recording what the compiled programs trace."""
    _, model = tiny_pair
    traced = {"vision": [], "text": []}
    vision_call, text_call = VisionTower.__call__, TextDecoder.__call__

    def vision(self, patches, *a, **k):
        traced["vision"].append(patches.shape)
        return vision_call(self, patches, *a, **k)

    def text(self, embeds, *a, **k):
        traced["text"].append(embeds.shape)
        return text_call(self, embeds, *a, **k)

    monkeypatch_module.setattr(VisionTower, "__call__", vision)
    monkeypatch_module.setattr(TextDecoder, "__call__", text)
    jax.clear_caches()  # make sure this call traces (and so records) its programs
    batch = image_batch()
    before = dict(CALLS)
    # A seed whose draws hold no vision special token (teacher forcing would read one as an image run).
    out = generate(model, **batch, max_new_tokens=8, temperature=1.0, num_generations=3, eos_token_ids=(), seed=8)
    calls = {k: CALLS[k] - before.get(k, 0) for k in ("prefill", "prefill_rows", "decode")}
    monkeypatch_module.undo()
    return batch, out, traced, calls


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_logprobs_equal_teacher_forced_log_softmax(tiny_pair, sampled_images):
    _, model = tiny_pair
    batch, out, _, _ = sampled_images
    ref = log_softmax(teacher_forced_logits(model, batch, out, 3))
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    expected = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
    valid = np.arange(tokens.shape[1])[None] < lengths[:, None]
    err = np.abs(np.where(valid, np.asarray(out.logprobs) - expected, 0)).max()
    assert err < 1e-4, f"sampler vs teacher-forced log-prob: max |diff| {err:.2e}"
    np.testing.assert_array_equal(out.sampling_logprobs, out.logprobs)


def test_g_samples_from_one_prefill(sampled_images):
    batch, out, traced, calls = sampled_images
    b, g = len(batch["input_ids"]), 3
    tokens = np.asarray(out.tokens)
    assert tokens.shape == (b * g, 8)
    for i in range(b):
        group = {tuple(r) for r in tokens[i * g:(i + 1) * g]}
        assert len(group) == g, f"prompt {i}: {g} samples are not all different: {tokens[i * g:(i + 1) * g]}"
    # Structure of the compiled programs: one vision tower over the batch's 3 images (4 slots, not 3 * G) and
    # one prompt forward over B rows, not B * G; at run time one prefill call of B rows.
    assert traced["vision"] == [(4, 64, 3 * 2 * 14 * 14)], traced["vision"]
    assert traced["text"] == [(b, 32, 64)], traced["text"]
    assert calls == {"prefill": 1, "prefill_rows": b, "decode": 1}


def test_seed_determinism(tiny_pair, sampled_images):
    _, model = tiny_pair
    batch, out, _, _ = sampled_images
    n0 = compile_count()
    again = generate(model, **batch, max_new_tokens=8, temperature=1.0, num_generations=3, eos_token_ids=(), seed=8)
    other = generate(model, **batch, max_new_tokens=8, temperature=1.0, num_generations=3, eos_token_ids=(), seed=9)
    assert compile_count() == n0
    np.testing.assert_array_equal(again.tokens, out.tokens)
    np.testing.assert_array_equal(again.logprobs, out.logprobs)
    assert (np.asarray(other.tokens) != np.asarray(out.tokens)).any()


def test_top_k_top_p_tokens_in_allowed_set(tiny_pair):
    _, model = tiny_pair
    batch = text_batch(lengths=(4, 8, 12), seed=5)
    t, k, p = 0.7, 20, 0.9
    out = generate(model, **batch, max_new_tokens=10, temperature=t, top_k=k, top_p=p, num_generations=2,
                   eos_token_ids=(), seed=1)
    logits = teacher_forced_logits(model, batch, out, 2)
    tokens = np.asarray(out.tokens)
    keep, probs = allowed_and_probs(logits, t, k, p)
    inside = np.take_along_axis(keep, tokens[..., None], -1)[..., 0]
    assert inside.all(), f"{(~inside).sum()} sampled tokens outside the top-k/top-p set"
    lp = np.take_along_axis(log_softmax(logits / t), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, lp, atol=1e-4)
    slp = np.log(np.take_along_axis(probs, tokens[..., None], -1)[..., 0])
    np.testing.assert_allclose(out.sampling_logprobs, slp, atol=1e-4)


def test_no_recompile_inside_bucket(tiny_pair):
    _, model = tiny_pair
    kw = dict(temperature=0.0, eos_token_ids=(3,), pad_token_id=0)
    generate(model, **text_batch(lengths=(3, 6, 9), seed=0), max_new_tokens=9, **kw)
    n0 = compile_count()
    other_model = nnx.merge(*nnx.split(model))   # a distinct object with the same structure (as a trainer makes)
    for i, (lengths, new) in enumerate([((4, 12, 16), 12), ((10, 2, 7), 16), ((16, 16, 16), 10)]):
        m = other_model if i == 1 else model
        out = generate(m, **text_batch(lengths=lengths, seed=i + 1), max_new_tokens=new, **kw)
        assert np.asarray(out.tokens).shape == (3, new)
    assert compile_count() == n0, f"{compile_count() - n0} recompilations inside one bucket"


def test_cache_dtype_follows_model(tiny_pair):
    """A bf16 cast of the weights (as a trainer passes) gives bf16 prompt and sample caches (traced only)."""
    import jax.numpy as jnp

    from jaxr1.sampling import make_spec, prepare_prompts
    from jaxr1.sampling.sampler import decode_fn, prefill_fn
    _, model = tiny_pair
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    batch = prepare_prompts(model.config, **image_batch())
    for loop in ("unroll", "scan"):
        spec = make_spec(model.config, max_new_tokens=4, temperature=1.0, top_k=5, layer_loop=loop)
        state = jax.eval_shape(lambda p: prefill_fn(graphdef, p, batch, jax.random.key(0), 4, 1.0, 1.0, spec=spec),
                               params)
        assert state.gen is None   # the per-row cache exists only inside decode (it grows by segment)
        out = jax.eval_shape(lambda p, s: decode_fn(graphdef, p, s, spec=spec, keep_cache=True), params, state)
        leaves = jax.tree.leaves((state.prompt.k, state.prompt.v, out.gen.k, out.gen.v))
        assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
        assert out.logprobs.dtype == jnp.float32 and out.tokens.dtype == jnp.int32
