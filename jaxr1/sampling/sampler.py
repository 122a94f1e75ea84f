"""The sampler: prefill each prompt once, then decode `num_samples` rows per prompt in one compiled loop.

Two jitted programs per shape bucket, both pure in (graphdef, params, ...) so a trainer can pass its live
(possibly cast or sharded) weights:
  prefill  vision tower + prompt forward for the B prompts (never B * n), writes the prompt KV cache and
           draws each row's first token;
  decode   `lax.while_loop`s over a per-row cache that exit once every row has stopped. The cache grows
           by segments (`DecodeSpec.windows`: min_window, 2x, 4x, ... up to gen_len): a segment's loop
           body attends over a cache of exactly its window, so a step at position p reads O(p) cache
           slots, not gen_len (a segment ends when the next slot leaves its window; the next one pads
           the cache to twice the size, once, and is skipped with all later ones once every row has
           stopped). All segments are in the one decode program (a `lax.cond` chain), so a spec compiles
           one prefill and one decode program. The token buffers are donated and update in place.
`max_new_tokens`, temperature and top_p are traced values; prompt length, image slots / patches and the
generation buffer length are bucketed, so steady-state batches reuse the compiled programs.
With `DecodeSpec.mesh` the rows are split over the mesh's batch axes (`jaxr1.sampling.layout`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
from flax import nnx

from jaxr1.models.qwen2_5_vl.text import KVCache
from jaxr1.sampling.buckets import SamplerPrompts
from jaxr1.sampling.decode import GenKV, PromptKV, decode_step, layer_params
from jaxr1.sampling.functions import SamplingMode, sample_tokens
from jaxr1.sampling.layout import Layout, constrain_params

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
    live_window: bool = True          # attend over the live part of the cache only (False: all gen_len slots)
    min_window: int = 64              # cache length of the first segment (a power of two)
    mesh: jax.sharding.Mesh | None = None   # rows over (data, fsdp); see jaxr1.sampling.layout

    @property
    def windows(self) -> tuple[int, ...]:
        """The per-row cache length of each decode segment (the last one is gen_len)."""
        if not self.live_window:
            return (self.gen_len,)
        w, out = min(self.min_window, self.gen_len), []
        while w < self.gen_len:
            out.append(w)
            w *= 2
        return (*out, self.gen_len)

    def layout(self, prompts: int, kv_heads: int) -> Layout:
        return Layout.make(self.mesh, prompts=prompts, rows=prompts * self.num_samples, kv_heads=kv_heads)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplerState:
    prompt: PromptKV
    gen: GenKV | None            # only inside decode (its length changes by segment); None outside
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
    model = nnx.merge(graphdef, constrain_params(params, spec.mesh))
    lm, inputs, n = model.language_model, batch.inputs, spec.num_samples
    b, tp = inputs.input_ids.shape
    lay = spec.layout(b, lm.cfg.num_key_value_heads)
    # The vision tower runs here, once. A family with DeepStack (Qwen3-VL) also feeds intermediate vision
    # features into the first decoder layers at the image positions (prompt only: decode has no image tokens).
    feats = None if inputs.vision is None else model.encode_images(inputs.vision)
    embeds = model.embed(inputs, feats)
    deepstack = getattr(model, "deepstack_inputs", None)
    deepstack = None if deepstack is None else deepstack(inputs, feats)
    extra = {} if deepstack is None else {"deepstack": deepstack}
    cache = KVCache.zeros(lm.cfg, b, tp, embeds.dtype)
    hidden, cache = lm(embeds, inputs.positions, inputs.attention_mask, cache=cache, cache_index=0, **extra)
    logits = lay.rows_(jnp.repeat(lm.logits(hidden[:, -1]).astype(jnp.float32), n, axis=0))  # left padded
    rows = b * n
    valid = inputs.attention_mask.astype(bool)
    zeros = jnp.zeros((rows, spec.gen_len), jnp.float32)
    state = SamplerState(
        prompt=PromptKV.from_cache(cache.k, cache.v, valid, spec.layer_loop), gen=None,
        tokens=jnp.full((rows, spec.gen_len), spec.pad_token_id, jnp.int32), logprobs=zeros,
        sampling_logprobs=zeros, last=jnp.zeros((rows,), jnp.int32),
        base_position=jnp.repeat(batch.prompt_lengths + batch.rope_deltas, n).astype(jnp.int32),
        done=jnp.zeros((rows,), bool), lengths=jnp.zeros((rows,), jnp.int32),
        stop_reason=jnp.zeros((rows,), jnp.int32), step=jnp.zeros((), jnp.int32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32), temperature=jnp.asarray(temperature, jnp.float32),
        top_p=jnp.asarray(top_p, jnp.float32), key=key)
    state = lay.state(state)
    token, lp, slp = sample_tokens(logits, jax.random.fold_in(key, 0), state.temperature, state.top_p, spec.mode)
    return lay.state(_record(state, spec, token, lp, slp, state.gen))


def _grow(gen: GenKV, length: int) -> GenKV:
    """The per-row cache padded (with zeros, masked until written) to `length` slots."""
    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)
    one = lambda kv, axis: tuple(pad(x, axis) for x in kv) if isinstance(kv, tuple) else pad(kv, axis)
    return GenKV(one(gen.k, -1), one(gen.v, -2))


def _gen_dtype(prompt: PromptKV):
    return (prompt.k[0] if isinstance(prompt.k, tuple) else prompt.k).dtype


def _decode(graphdef, params, state: SamplerState, *, spec: DecodeSpec, keep_cache: bool = False) -> SamplerState:
    """The decode program: segments of `spec.windows`, each a while_loop whose body reads a cache of exactly
    its window. keep_cache (tests): return the per-row cache padded to gen_len; otherwise gen is None."""
    TRACES["decode"] += 1
    lm = nnx.merge(graphdef, constrain_params(params, spec.mesh)).language_model   # gathered before any loop
    layers = layer_params(lm, spec.layer_loop)   # outside the loop: sliced once per call, not per step
    rows = state.last.shape[0]
    lay = spec.layout(rows // spec.num_samples, lm.cfg.num_key_value_heads)
    windows = spec.windows

    def live(s: SamplerState):
        return (s.step < s.max_new_tokens) & ~jnp.all(s.done)

    def body(s: SamplerState):
        slot = s.step - 1   # the token fed now is continuation token step-1
        logits, gen = decode_step(lm, layers, s.last, s.base_position + slot, slot, s.prompt, s.gen)
        gen = GenKV(lay.cache(gen.k, lay.rows, spec.layer_loop == "scan"),
                    lay.cache(gen.v, lay.rows, spec.layer_loop == "scan"))
        token, lp, slp = sample_tokens(lay.rows_(logits), jax.random.fold_in(s.key, s.step), s.temperature,
                                       s.top_p, spec.mode)
        return lay.state(_record(s, spec, token, lp, slp, gen))

    def finish(s: SamplerState) -> SamplerState:
        gen = lay.state(dataclasses.replace(s, gen=_grow(s.gen, spec.gen_len))).gen if keep_cache else None
        return dataclasses.replace(s, gen=gen)

    def segment(k: int, s: SamplerState) -> SamplerState:
        w = windows[k]
        s = jax.lax.while_loop(lambda s: live(s) & (s.step - 1 < w), body, s)
        if k + 1 == len(windows):
            return finish(s)
        grow = lambda s: segment(k + 1, lay.state(dataclasses.replace(s, gen=_grow(s.gen, windows[k + 1]))))
        return jax.lax.cond(live(s), grow, finish, s)

    gen = GenKV.zeros(lm, rows, windows[0], _gen_dtype(state.prompt), spec.layer_loop)
    s = segment(0, lay.state(dataclasses.replace(state, gen=gen)))
    return dataclasses.replace(s, stop_reason=jnp.where(s.stop_reason == STOP_NONE, STOP_LENGTH, s.stop_reason))


prefill_fn = jax.jit(_prefill, static_argnames=("graphdef", "spec"))
decode_fn = jax.jit(_decode, static_argnames=("graphdef", "spec", "keep_cache"), donate_argnames=("state",))


def sample(graphdef, params, batch: SamplerPrompts, key: jax.Array, *, max_new_tokens: int, temperature: float,
           top_p: float, spec: DecodeSpec) -> SampleOutput:
    """The jitted core: weights are arguments (never closed over). Returns device arrays cut to
    max_new_tokens columns."""
    if not 1 <= max_new_tokens <= spec.gen_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, gen_len={spec.gen_len}]")
    CALLS["prefill"] += 1
    CALLS["prefill_rows"] += int(batch.inputs.input_ids.shape[0])
    # The mesh is ambient while tracing: a Pallas attention kernel shard_maps itself over it (jaxr1.ops).
    with jax.set_mesh(spec.mesh) if spec.mesh is not None else contextlib.nullcontext():
        state = prefill_fn(graphdef, params, batch, key, max_new_tokens, temperature, top_p, spec=spec)
        CALLS["decode"] += 1
        s = decode_fn(graphdef, params, state, spec=spec)
    del state
    cut = lambda x: x[:, :max_new_tokens]
    return SampleOutput(cut(s.tokens), s.lengths, cut(s.logprobs), cut(s.sampling_logprobs), s.stop_reason)
