"""Decode by segments of the per-row cache (live_window): same tokens, log-probs and caches as attending over
the whole preallocated cache, each segment's loop reads only its window, and one decode program per spec."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxr1.sampling import TRACES, compile_count, generate, make_spec, prepare_prompts
from jaxr1.sampling.sampler import decode_fn, prefill_fn
from tests.sampling.prompts import hf_generate, image_batch, text_batch


def test_windows():
    cfg = type("C", (), {"eos_token_id": None, "pad_token_id": 0})()
    spec = lambda n, **k: make_spec(cfg, max_new_tokens=n, **k).windows
    assert spec(1024) == (64, 128, 256, 512, 1024)
    assert spec(1000, min_window=128) == (128, 256, 512, 1024)
    assert spec(12) == (16,)
    assert spec(1024, live_window=False) == (1024,)
    with pytest.raises(ValueError):
        spec(16, min_window=24)


def _run(model, batch, *, live, loop="unroll", temperature=1.0, n=2, new=13, eos=()):
    spec = make_spec(model.config, max_new_tokens=new, temperature=temperature, top_k=0, num_generations=n,
                     eos_token_ids=eos, layer_loop=loop, live_window=live, min_window=4)
    graphdef, params = nnx.split(model)
    sp = prepare_prompts(model.config, **batch)
    state = prefill_fn(graphdef, params, sp, jax.random.key(3), new, max(temperature, 1e-6), 1.0, spec=spec)
    return decode_fn(graphdef, params, state, spec=spec, keep_cache=True)


@pytest.mark.parametrize("loop", ["unroll", "scan"])
def test_same_as_full_cache(tiny_pair, loop):
    """Windows 4, 8, 16 against one 16-slot cache: tokens equal, log-probs and K/V within fp32 rounding."""
    _, model = tiny_pair
    batch = image_batch()
    full, live = _run(model, batch, live=False, loop=loop), _run(model, batch, live=True, loop=loop)
    np.testing.assert_array_equal(live.tokens, full.tokens)
    np.testing.assert_array_equal(live.lengths, full.lengths)
    np.testing.assert_allclose(live.logprobs, full.logprobs, atol=1e-5)
    np.testing.assert_allclose(live.sampling_logprobs, full.sampling_logprobs, atol=1e-5)
    for a, b in zip(jax.tree.leaves(live.gen), jax.tree.leaves(full.gen)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_greedy_multi_segment_equals_transformers(tiny_pair):
    hf_model, model = tiny_pair
    batch = text_batch(lengths=(5, 9, 14))
    hf = hf_generate(hf_model, batch, max_new_tokens=20, eos_token_ids=())
    out = generate(model, **batch, max_new_tokens=20, temperature=0.0, eos_token_ids=(), min_window=4)
    np.testing.assert_array_equal(np.asarray(out.tokens), hf)


def _while_carry_lengths(jaxpr, rows, head_dim):
    """Slot lengths of the per-row V caches ([rows, Hkv, slots, head_dim]) carried by each while loop of the
    decode program (its jaxpr)."""
    out = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "while":
                body = eqn.params["body_jaxpr"].jaxpr
                shapes = {tuple(v.aval.shape) for v in body.invars if getattr(v.aval, "ndim", 0) == 4}
                out.append(sorted({s[-2] for s in shapes if s[0] == rows and s[-1] == head_dim}))
            for p in eqn.params.values():
                for sub in (p if isinstance(p, (tuple, list)) else [p]):
                    if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)
                    elif hasattr(sub, "eqns"):
                        walk(sub)
    walk(jaxpr.jaxpr)
    return out


def test_each_segment_reads_only_its_window(tiny_pair):
    """The decode program has one while loop per window, and the per-row caches carried by the loop of window
    w have w slots, so no step reads gen_len slots before it needs them (2 prompts x 2 samples = 4 rows)."""
    _, model = tiny_pair
    spec = make_spec(model.config, max_new_tokens=30, temperature=1.0, num_generations=2, eos_token_ids=(),
                     min_window=4)
    graphdef, params = nnx.split(model)
    sp = prepare_prompts(model.config, **text_batch(lengths=(3, 5)))
    state = jax.eval_shape(lambda p: prefill_fn(graphdef, p, sp, jax.random.key(0), 30, 1.0, 1.0, spec=spec), params)
    jaxpr = jax.make_jaxpr(lambda p, s: decode_fn(graphdef, p, s, spec=spec))(params, state)
    lengths = _while_carry_lengths(jaxpr, 4, model.config.text.head_dim)
    assert lengths == [[4], [8], [16], [32]], lengths


def test_one_decode_program_per_spec(tiny_pair):
    """All segments are compiled at once: a later call that runs further (or stops sooner) compiles nothing."""
    _, model = tiny_pair
    batch = text_batch(lengths=(4, 7, 10), seed=2)
    free = generate(model, **batch, max_new_tokens=24, temperature=0.0, eos_token_ids=(), min_window=4)
    first = int(np.asarray(free.tokens)[0, 0])   # a token row 0 emits at step 0: as EOS it stops that row early
    d0, n0 = TRACES["decode"], compile_count()
    for eos, new in [((first,), 24), ((), 17), ((first,), 20)]:
        out = generate(model, **batch, max_new_tokens=new, temperature=0.0, eos_token_ids=eos, min_window=4)
        assert np.asarray(out.tokens).shape == (3, new)
    # eos changes the spec (one more program pair for it); the max_new_tokens changes inside the bucket do not.
    assert TRACES["decode"] - d0 == 1 and compile_count() - n0 == 2, (TRACES, compile_count() - n0)
    np.testing.assert_array_equal(np.asarray(out.tokens)[1:, :20][np.asarray(out.lengths)[1:] == 20],
                                  np.asarray(free.tokens)[1:, :20][np.asarray(out.lengths)[1:] == 20])
