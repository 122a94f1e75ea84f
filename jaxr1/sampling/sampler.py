"""The sampler: prefill each prompt once, then decode `num_samples` rows per prompt in one compiled loop.

Two jitted programs per shape bucket, both pure in (graphdef, params, ...) so a trainer can pass its live
(possibly cast or sharded) weights:
  prefill  vision tower + prompt forward for the B prompts (never B * n), writes the prompt KV cache and
           draws each row's first token;
  decode   a `lax.while_loop` over a preallocated per-row cache that exits once every row has stopped.
           Its state is donated, so the cache and token buffers update in place.
`max_new_tokens`, temperature and top_p are traced values; prompt length, image slots / patches and the
generation buffer length are bucketed, so steady-state batches reuse the compiled programs.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
from flax import nnx

from jaxr1.models.qwen2_5_vl.text import KVCache
from jaxr1.sampling.buckets import SamplerPrompts
from jaxr1.sampling.decode import GenKV, PromptKV, decode_step, layer_params
from jaxr1.sampling.functions import SamplingMode, sample_tokens

STOP_NONE, STOP_EOS, STOP_LENGTH = 0, 1, 2

# Trace counts of the two programs (a Python side effect runs once per compilation, never per call) and
# host-side call counts; tests read both.
TRACES: Counter = Counter()
CALLS: Counter = Counter()


def compile_count() -> int:
    return TRACES["prefill"] + TRACES["decode"]


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static configuration: a change here compiles new programs."""
    mode: SamplingMode
    num_samples: int
    gen_len: int                      # generation buffer length (bucketed max_new_tokens)
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    layer_loop: str = "unroll"        # "unroll": per-layer buffers (fastest); "scan": stacked, smaller program


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplerState:
    prompt: PromptKV
    gen: GenKV
    tokens: jax.Array            # [R, N] int32, pad after stop
    logprobs: jax.Array          # [R, N] float32, 0 after stop
    sampling_logprobs: jax.Array
    last: jax.Array              # [R] token fed at the next step
    base_position: jax.Array     # [R] text position of continuation token 0 (prompt length + rope delta)
    done: jax.Array              # [R] bool
    lengths: jax.Array           # [R] int32
    stop_reason: jax.Array       # [R] int32
    step: jax.Array              # scalar: index of the next token to produce
    max_new_tokens: jax.Array    # scalar
    temperature: jax.Array
    top_p: jax.Array
    key: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SampleOutput:
    """Rows grouped by prompt: rows i*n .. i*n+n-1 are prompt i's samples."""
    tokens: jax.Array             # [B*n, max_new_tokens] int32, pad_token_id after stop
    lengths: jax.Array            # [B*n] tokens generated, the EOS token included
    logprobs: jax.Array           # [B*n, max_new_tokens] log softmax(logits / T), full vocab; 0 after stop
    sampling_logprobs: jax.Array  # same, under the top-k / top-p renormalised distribution actually used
    stop_reason: jax.Array        # [B*n] STOP_EOS or STOP_LENGTH


def _record(s: SamplerState, spec: DecodeSpec, token, lp, slp, gen: GenKV) -> SamplerState:
    active = ~s.done
    token = jnp.where(active, token, spec.pad_token_id)
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None].astype(buf.dtype), s.step, axis=1)
    hit_eos = active & jnp.isin(token, jnp.asarray(spec.eos_token_ids, jnp.int32))
    return dataclasses.replace(
        s, gen=gen, tokens=put(s.tokens, token), logprobs=put(s.logprobs, jnp.where(active, lp, 0.0)),
        sampling_logprobs=put(s.sampling_logprobs, jnp.where(active, slp, 0.0)), last=token,
        done=s.done | hit_eos, lengths=s.lengths + active, stop_reason=jnp.where(hit_eos, STOP_EOS, s.stop_reason),
        step=s.step + 1)


def _prefill(graphdef, params, batch: SamplerPrompts, key, max_new_tokens, temperature, top_p, *,
             spec: DecodeSpec) -> SamplerState:
    TRACES["prefill"] += 1
    model = nnx.merge(graphdef, params)
    lm, inputs, n = model.language_model, batch.inputs, spec.num_samples
    b, tp = inputs.input_ids.shape
    # The vision tower runs here, once. A family with DeepStack (Qwen3-VL) also feeds intermediate vision
    # features into the first decoder layers at the image positions (prompt only: decode has no image tokens).
    feats = None if inputs.vision is None else model.encode_images(inputs.vision)
    embeds = model.embed(inputs, feats)
    deepstack = getattr(model, "deepstack_inputs", None)
    deepstack = None if deepstack is None else deepstack(inputs, feats)
    extra = {} if deepstack is None else {"deepstack": deepstack}
    cache = KVCache.zeros(lm.cfg, b, tp, embeds.dtype)
    hidden, cache = lm(embeds, inputs.positions, inputs.attention_mask, cache=cache, cache_index=0, **extra)
    logits = jnp.repeat(lm.logits(hidden[:, -1]).astype(jnp.float32), n, axis=0)   # left padded: last slot
    rows = b * n
    valid = inputs.attention_mask.astype(bool)
    zeros = jnp.zeros((rows, spec.gen_len), jnp.float32)
    state = SamplerState(
        prompt=PromptKV.from_cache(cache.k, cache.v, valid, spec.layer_loop),
        gen=GenKV.zeros(lm, rows, spec.gen_len, embeds.dtype, spec.layer_loop),
        tokens=jnp.full((rows, spec.gen_len), spec.pad_token_id, jnp.int32), logprobs=zeros,
        sampling_logprobs=zeros, last=jnp.zeros((rows,), jnp.int32),
        base_position=jnp.repeat(batch.prompt_lengths + batch.rope_deltas, n).astype(jnp.int32),
        done=jnp.zeros((rows,), bool), lengths=jnp.zeros((rows,), jnp.int32),
        stop_reason=jnp.zeros((rows,), jnp.int32), step=jnp.zeros((), jnp.int32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32), temperature=jnp.asarray(temperature, jnp.float32),
        top_p=jnp.asarray(top_p, jnp.float32), key=key)
    token, lp, slp = sample_tokens(logits, jax.random.fold_in(key, 0), state.temperature, state.top_p, spec.mode)
    return _record(state, spec, token, lp, slp, state.gen)


def _decode(graphdef, params, state: SamplerState, *, spec: DecodeSpec) -> SamplerState:
    TRACES["decode"] += 1
    lm = nnx.merge(graphdef, params).language_model
    layers = layer_params(lm, spec.layer_loop)   # outside the loop: sliced once per call, not per step

    def cond(s: SamplerState):
        return (s.step < s.max_new_tokens) & ~jnp.all(s.done)

    def body(s: SamplerState):
        slot = s.step - 1   # the token fed now is continuation token step-1
        logits, gen = decode_step(lm, layers, s.last, s.base_position + slot, slot, s.prompt, s.gen)
        token, lp, slp = sample_tokens(logits, jax.random.fold_in(s.key, s.step), s.temperature, s.top_p, spec.mode)
        return _record(s, spec, token, lp, slp, gen)

    s = jax.lax.while_loop(cond, body, state)
    return dataclasses.replace(s, stop_reason=jnp.where(s.stop_reason == STOP_NONE, STOP_LENGTH, s.stop_reason))


prefill_fn = jax.jit(_prefill, static_argnames=("graphdef", "spec"))
decode_fn = jax.jit(_decode, static_argnames=("graphdef", "spec"), donate_argnames=("state",))


def sample(graphdef, params, batch: SamplerPrompts, key: jax.Array, *, max_new_tokens: int, temperature: float,
           top_p: float, spec: DecodeSpec) -> SampleOutput:
    """The jitted core: weights are arguments (never closed over). Returns device arrays cut to
    max_new_tokens columns."""
    if not 1 <= max_new_tokens <= spec.gen_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, gen_len={spec.gen_len}]")
    CALLS["prefill"] += 1
    CALLS["prefill_rows"] += int(batch.inputs.input_ids.shape[0])
    state = prefill_fn(graphdef, params, batch, key, max_new_tokens, temperature, top_p, spec=spec)
    CALLS["decode"] += 1
    s = decode_fn(graphdef, params, state, spec=spec)
    del state
    cut = lambda x: x[:, :max_new_tokens]
    return SampleOutput(cut(s.tokens), s.lengths, cut(s.logprobs), cut(s.sampling_logprobs), s.stop_reason)
