"""Token selection: allowed sets against an independent numpy computation, frequencies, log-probs."""
import jax
import numpy as np
import pytest

from jaxr1.sampling import SamplingMode, sample_tokens

_sample = jax.jit(sample_tokens, static_argnames="mode")


def allowed_and_probs(logits, temperature, top_k, top_p):
    """transformers' warper order (temperature, top-k, top-p) with a full sort: allowed mask and the
    renormalised sampling distribution over the vocabulary."""
    x = logits.astype(np.float64) / temperature
    keep = np.ones_like(x, bool)
    if top_k:
        keep &= x >= np.sort(x, axis=-1)[..., -top_k, None]
    x = np.where(keep, x, -np.inf)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, -1)
        before = np.cumsum(sorted_p, -1) - sorted_p
        keep_sorted = before < top_p
        keep_sorted[..., 0] = True
        np.put_along_axis(keep, order, keep_sorted & np.take_along_axis(keep, order, -1), -1)
        probs = np.where(keep, probs, 0)
        probs /= probs.sum(-1, keepdims=True)
    return keep, probs


CASES = [  # temperature, top_k, top_p, nucleus_candidates, logit scale (large = peaked)
    (1.0, 0, 1.0, 256, 1.0),
    (0.7, 5, 1.0, 256, 1.0),
    (1.0, 0, 0.8, 256, 1.0),
    (1.3, 6, 0.7, 256, 1.0),
    (1.0, 0, 0.9, 3, 1.0),    # flat: top-3 candidates hold < 0.9, so the full-sort branch runs
    (1.0, 0, 0.6, 3, 4.0),    # peaked: the nucleus fits in the top-3 candidates
]


@pytest.mark.parametrize("temperature,top_k,top_p,cands,scale", CASES)
def test_allowed_set_frequencies_and_logprobs(temperature, top_k, top_p, cands, scale):
    vocab, draws = 12, 40_000
    row = np.random.default_rng(top_k + int(10 * top_p)).standard_normal(vocab).astype(np.float32) * scale
    logits = np.tile(row, (draws, 1))
    mode = SamplingMode(top_k=top_k, use_top_p=top_p < 1, nucleus_candidates=cands)
    tok, lp, slp = (np.asarray(a) for a in _sample(logits, jax.random.key(0), temperature, top_p, mode))
    keep, probs = allowed_and_probs(row[None], temperature, top_k, top_p)
    keep, probs = keep[0], probs[0]
    assert keep[tok].all(), f"sampled tokens {sorted(set(tok[~keep[tok]]))} outside the allowed set"
    freq = np.bincount(tok, minlength=vocab) / draws
    tol = 5 * np.sqrt(probs * (1 - probs) / draws) + 1e-4
    assert (np.abs(freq - probs) <= tol).all(), f"frequencies {freq.round(4)} vs renormalised {probs.round(4)}"
    x = row.astype(np.float64) / temperature
    full = x - np.log(np.exp(x - x.max()).sum()) - x.max()
    np.testing.assert_allclose(lp, full[tok], atol=1e-5)
    np.testing.assert_allclose(slp, np.log(probs[tok]), atol=1e-5)


def test_allowed_set_many_rows():
    """Different logits per row (mixed peaked and flat rows, so the nucleus branch differs by step)."""
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((256, 50)) * rng.uniform(0.2, 6, (256, 1))).astype(np.float32)
    for top_k, top_p, cands in [(7, 1.0, 256), (0, 0.85, 8), (10, 0.5, 256)]:
        mode = SamplingMode(top_k=top_k, use_top_p=top_p < 1, nucleus_candidates=cands)
        keep, _ = allowed_and_probs(logits, 0.9, top_k, top_p)
        for seed in range(3):
            tok = np.asarray(_sample(logits, jax.random.key(seed), 0.9, top_p, mode)[0])
            assert keep[np.arange(len(tok)), tok].all(), (top_k, top_p, seed)


def test_greedy_and_determinism():
    logits = np.random.default_rng(0).standard_normal((8, 30)).astype(np.float32)
    tok, lp, _ = _sample(logits, jax.random.key(0), 1.0, 1.0, SamplingMode(greedy=True))
    np.testing.assert_array_equal(tok, logits.argmax(-1))
    np.testing.assert_allclose(lp, np.asarray(jax.nn.log_softmax(logits))[np.arange(8), logits.argmax(-1)], atol=1e-6)
    mode = SamplingMode(top_k=5)
    a = _sample(logits, jax.random.key(1), 1.0, 1.0, mode)[0]
    b = _sample(logits, jax.random.key(1), 1.0, 1.0, mode)[0]
    np.testing.assert_array_equal(a, b)
