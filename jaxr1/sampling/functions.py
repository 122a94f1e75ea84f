"""Token selection from one step's logits: greedy, temperature, top-k, top-p (nucleus), with log-probs.

Order as in transformers and vLLM: temperature, then top-k, then top-p over the top-k renormalised
distribution. Top-k never sorts the vocabulary (`lax.top_k`). Top-p alone first tries the top
`nucleus_candidates` tokens and falls back to a full sort only on steps where those carry less than
`top_p` of the mass in some row; both branches give the same answer, the first is just cheaper.

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

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """The static part of the sampling configuration (a change recompiles); temperature and top_p values are
    traced scalars."""
    greedy: bool = False
    top_k: int = 0
    use_top_p: bool = False
    nucleus_candidates: int = 256


def nucleus_keep(sorted_logits: jax.Array, log_norm: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep mask over descending-sorted logits: token i stays iff the mass strictly before it is < top_p
    (transformers' TopPLogitsWarper with min_tokens_to_keep=1). log_norm is the normaliser of the
    distribution the nucleus is taken in ([..., 1])."""
    probs = jnp.exp(sorted_logits - log_norm)
    before = jnp.cumsum(probs, axis=-1) - probs
    return (before < top_p) | (jnp.arange(sorted_logits.shape[-1]) == 0)


def _draw(key: jax.Array, cand_logits: jax.Array, cand_ids: jax.Array, keep: jax.Array, log_norm: jax.Array):
    """Draw among candidates ([R, C], masked by keep); returns token, full logprob, sampling logprob."""
    masked = jnp.where(keep, cand_logits, _NEG_INF)
    choice = jax.random.categorical(key, masked, axis=-1)
    picked = jnp.take_along_axis(cand_logits, choice[:, None], axis=-1)[:, 0]
    token = jnp.take_along_axis(cand_ids, choice[:, None], axis=-1)[:, 0]
    kept_norm = jax.nn.logsumexp(masked, axis=-1)
    return token.astype(jnp.int32), picked - log_norm[:, 0], picked - kept_norm


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  mode: SamplingMode) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [R, V] -> (tokens [R] int32, logprob [R], sampling_logprob [R])."""
    logits = logits.astype(jnp.float32)
    if mode.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
        return token, lp, lp
    scaled = logits / temperature
    log_norm = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    vocab = scaled.shape[-1]
    if mode.top_k > 0:
        vals, ids = jax.lax.top_k(scaled, min(mode.top_k, vocab))
        keep = jnp.ones(vals.shape, bool)
        if mode.use_top_p:
            keep = nucleus_keep(vals, jax.nn.logsumexp(vals, axis=-1, keepdims=True), top_p)
        return _draw(key, vals, ids, keep, log_norm)
    if mode.use_top_p:
        c = min(mode.nucleus_candidates, vocab)
        vals, ids = jax.lax.top_k(scaled, c)

        def among_candidates(_):
            return _draw(key, vals, ids, nucleus_keep(vals, log_norm, top_p), log_norm)

        def full_sort(_):
            v, i = jax.lax.top_k(scaled, vocab)
            return _draw(key, v, i, nucleus_keep(v, log_norm, top_p), log_norm)

        if c == vocab:
            return among_candidates(None)
        # If the candidates hold >= top_p of the mass, every token outside them has >= top_p before it.
        cand_mass = jnp.exp(jax.nn.logsumexp(vals, axis=-1) - log_norm[:, 0])
        return jax.lax.cond(jnp.all(cand_mass >= top_p), among_candidates, full_sort, None)
    token = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
    lp = jnp.take_along_axis(scaled, token[:, None], axis=-1)[:, 0] - log_norm[:, 0]
    return token, lp, lp
