"""Token selection from one step's logits: greedy, temperature, top-k, top-p (nucleus), with log-probs.

Order as in transformers and vLLM: temperature, then top-k, then top-p over the top-k renormalised
distribution. Nothing sorts the vocabulary:
  - top-k takes `lax.top_k` candidates and draws among them (Gumbel-max over k values);
  - plain temperature sampling draws by inverse CDF with one uniform per row (two-level prefix sums over
    128-token chunks), not one Gumbel per vocabulary entry, which costs more than the lm head on a CPU;
  - top-p alone first tries the top `nucleus_candidates` tokens; on steps where they hold less than top_p
    of the mass in some row, it finds the nucleus threshold exactly by bisection on the float32 bits of
    the probabilities (30 masked sums) and draws by inverse CDF inside it. Both give the same set.

Two log-probs per token (both float32):
  logprob           log softmax(logits / T) over the whole vocabulary: what the trainer recomputes
                    (`jaxr1.rl.token_logprobs(..., temperature=T)`), so importance ratios start at 1.
  sampling_logprob  the same token under the truncated, renormalised distribution actually drawn from
                    (equal to logprob without top-k / top-p).
Greedy (T = 0) has no sampling distribution; both are then the temperature-1 log-softmax.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_CHUNK = 128


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """The static part of the sampling configuration (a change recompiles); temperature and top_p values are
    traced scalars."""
    greedy: bool = False
    top_k: int = 0
    use_top_p: bool = False
    nucleus_candidates: int = 256


def first_argmax(x: jax.Array) -> jax.Array:
    """argmax over the last axis (first index on ties) as two plain reductions; XLA:CPU's variadic argmax
    reduce is ~10x slower over a vocabulary."""
    m = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == m, jnp.arange(x.shape[-1]), x.shape[-1]), axis=-1).astype(jnp.int32)


def nucleus_keep(sorted_logits: jax.Array, log_norm: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep mask over descending-sorted logits: token i stays iff the mass strictly before it is < top_p
    (transformers' TopPLogitsWarper with min_tokens_to_keep=1). log_norm is the normaliser of the
    distribution the nucleus is taken in ([..., 1])."""
    probs = jnp.exp(sorted_logits - log_norm)
    before = jnp.cumsum(probs, axis=-1) - probs
    return (before < top_p) | (jnp.arange(sorted_logits.shape[-1]) == 0)


def nucleus_threshold(probs: jax.Array, top_p: jax.Array) -> jax.Array:
    """Smallest probability in the nucleus, per row ([R, V] -> [R, 1]), without sorting: the least t with
    mass(p > t) < top_p is one of the p values; bisect on the (order-preserving) bits of non-negative floats."""
    bits_of = lambda b: jax.lax.bitcast_convert_type(b, jnp.float32)

    def step(_, lo_hi):
        lo, hi = lo_hi                                   # invariant: mass above bits_of(hi) < top_p
        mid = lo + (hi - lo) // 2
        above = jnp.sum(jnp.where(probs > bits_of(mid), probs, 0.0), axis=-1, keepdims=True)
        ok = above < top_p
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    r = probs.shape[0]
    lo = jnp.zeros((r, 1), jnp.int32)
    hi = jnp.full((r, 1), jnp.int32(0x3F800000))         # 1.0: nothing is above it
    _, hi = jax.lax.fori_loop(0, 31, step, (lo, hi))
    return bits_of(hi)


def inverse_cdf(key: jax.Array, weights: jax.Array) -> jax.Array:
    """One draw per row from unnormalised non-negative weights [R, V], with one uniform per row (key: one
    key, or [R] keys)."""
    r, v = weights.shape
    pad = -v % _CHUNK
    w = jnp.pad(weights, ((0, 0), (0, pad))).reshape(r, -1, _CHUNK)
    chunk_cum = jnp.cumsum(jnp.sum(w, axis=-1), axis=-1)                  # [R, C]
    target = (1.0 - _uniform(key, r)) * chunk_cum[:, -1:]   # in (0, total]
    c = jnp.minimum(jnp.sum(chunk_cum < target, axis=-1), chunk_cum.shape[1] - 1)
    before = jnp.where(c > 0, jnp.take_along_axis(chunk_cum, jnp.maximum(c - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inner = jnp.cumsum(jnp.take_along_axis(w, c[:, None, None], axis=1)[:, 0], axis=-1)   # [R, 128]
    # Clamp to the chunk's own total so rounding can never step past its last positive weight.
    t = jnp.minimum(target[:, 0] - before, inner[:, -1])
    j = jnp.minimum(jnp.sum(inner < t[:, None], axis=-1), _CHUNK - 1)
    return (c * _CHUNK + j).astype(jnp.int32)


def _uniform(key: jax.Array, r: int) -> jax.Array:
    """[r, 1] uniforms from one key, or one per row from keys [r] (draws that do not depend on a row's place)."""
    if key.ndim == 0:
        return jax.random.uniform(key, (r, 1))
    return jax.vmap(lambda k: jax.random.uniform(k, (1,)))(key)


def _gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if key.ndim == 0:
        return jax.random.gumbel(key, shape)
    return jax.vmap(lambda k: jax.random.gumbel(k, shape[1:]))(key)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]


def _draw_candidates(key, cand_logits, cand_ids, keep, log_norm):
    """Gumbel-max among candidates ([R, C], masked by keep); returns token, full logprob, sampling logprob."""
    masked = jnp.where(keep, cand_logits, -jnp.inf)
    choice = first_argmax(masked + _gumbel(key, masked.shape))
    picked = _gather(cand_logits, choice)
    return _gather(cand_ids, choice).astype(jnp.int32), picked - log_norm[:, 0], picked - jax.nn.logsumexp(masked, -1)


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  mode: SamplingMode) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [R, V] -> (tokens [R] int32, logprob [R], sampling_logprob [R]). key: one key for the step, or
    one per row ([R] keys: the sampler's, so a row draws the same tokens wherever it sits in the batch)."""
    logits = logits.astype(jnp.float32)
    if mode.greedy:
        token = first_argmax(logits)
        lp = _gather(logits, token) - jax.nn.logsumexp(logits, axis=-1)
        return token, lp, lp
    scaled = logits / temperature
    log_norm = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    vocab = scaled.shape[-1]
    if mode.top_k > 0:
        vals, ids = jax.lax.top_k(scaled, min(mode.top_k, vocab))
        keep = jnp.ones(vals.shape, bool)
        if mode.use_top_p:
            keep = nucleus_keep(vals, jax.nn.logsumexp(vals, axis=-1, keepdims=True), top_p)
        return _draw_candidates(key, vals, ids, keep, log_norm)
    if mode.use_top_p:
        c = min(mode.nucleus_candidates, vocab)
        vals, ids = jax.lax.top_k(scaled, c)

        def among_candidates(_):
            return _draw_candidates(key, vals, ids, nucleus_keep(vals, log_norm, top_p), log_norm)

        def by_threshold(_):
            probs = jnp.exp(scaled - log_norm)
            kept = jnp.where(probs >= nucleus_threshold(probs, top_p), probs, 0.0)
            token = inverse_cdf(key, kept)
            lp = _gather(scaled, token) - log_norm[:, 0]
            return token, lp, lp - jnp.log(jnp.sum(kept, axis=-1))

        if c == vocab:
            return among_candidates(None)
        # If the top c hold >= top_p of the mass, every token outside them has >= top_p before it.
        cand_mass = jnp.exp(jax.nn.logsumexp(vals, axis=-1) - log_norm[:, 0])
        return jax.lax.cond(jnp.all(cand_mass >= top_p), among_candidates, by_threshold, None)
    token = inverse_cdf(key, jnp.exp(scaled - log_norm))
    lp = _gather(scaled, token) - log_norm[:, 0]
    return token, lp, lp
