"""The sampler: prefill each prompt once, then decode `num_generations` rows per prompt in one compiled loop.

Two jitted programs per shape bucket (the compacting path below splits decode by segment), both pure in
(graphdef, params, ...) so a trainer can pass its live (possibly cast or sharded) weights:
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

Finished rows (`DecodeSpec.compact`, on by default when a prompt has several samples): `sample` then runs
the segments as separate programs from the host and, between two of them, drops the rows that have
stopped. The live rows regroup into B groups of n' = n/2, n/4, ... rows (a group holds rows of one prompt and
a copy of that prompt's cache, so a prompt with many live rows may fill two groups and a finished prompt
none): the next segment's steps cost B * n' rows, not B * n. With completions of a long-tailed length
(most stop at 100-300 tokens of 1,024) the late segments, the longest ones, run at a fraction of the rows.
Each row samples with its own key (folded from its original index), so compaction changes no token.
Programs: one per (window, n') met, each compiled once; compaction itself is a gather per segment boundary.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import Counter
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxr1.models.cache import KVCache
from jaxr1.parallel.distributed import to_host
from jaxr1.sampling.buckets import SamplerPrompts
from jaxr1.sampling.decode import GenKV, PromptKV, decode_step, layer_params
from jaxr1.sampling.functions import SamplingMode, sample_tokens
from jaxr1.sampling.layout import RolloutSharding, constrain_params
from jaxr1.sampling.layout import batch_shards

STOP_NONE, STOP_EOS, STOP_LENGTH = 0, 1, 2

# Trace counts of the two programs (a Python side effect runs once per compilation, never per call) and
# host-side call counts; tests read both.
TRACES: Counter = Counter()
CALLS: Counter = Counter()


def compile_count() -> int:
    return sum(TRACES[k] for k in ("prefill", "decode", "segment", "compact", "merge"))


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static configuration: a change here compiles new programs."""
    mode: SamplingMode
    num_generations: int
    gen_len: int                      # generation buffer length (bucketed max_new_tokens)
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    layer_loop: str = "unroll"        # "unroll": per-layer buffers (fastest); "scan": stacked, smaller program
    live_window: bool = True          # attend over the live part of the cache only (False: all gen_len slots)
    min_window: int = 64              # cache length of the first segment (a power of two)
    mesh: jax.sharding.Mesh | None = None   # rows over (data, fsdp); see jaxr1.sampling.layout
    compact: bool = True              # drop finished rows between segments (see the module docstring)

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

    def layout(self, prompts: int, kv_heads: int, rows: int | None = None) -> RolloutSharding:
        rows = prompts * self.num_generations if rows is None else rows
        return RolloutSharding.make(self.mesh, prompts=prompts, rows=rows, kv_heads=kv_heads)

    @property
    def compacts(self) -> bool:
        return self.compact and self.num_generations > 1 and len(self.windows) > 1


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
    row_id: jax.Array            # [R] int32: the row's place in the output (i*n + j); -1 for a padding row
    step: jax.Array              # scalar: index of the next token to produce
    max_new_tokens: jax.Array    # scalar
    temperature: jax.Array
    top_p: jax.Array
    key: jax.Array
    # The [R, ...] fields: split by row on a mesh (RolloutSharding.state), gathered by compaction (_compact).
    ROW_FIELDS: ClassVar[tuple[str, ...]] = ("tokens", "logprobs", "sampling_logprobs", "last", "base_position",
                                             "done", "lengths", "stop_reason", "row_id")


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


def _row_keys(key: jax.Array, step: jax.Array, row_id: jax.Array) -> jax.Array:
    """One key per row for step `step`, from the row's output index: the same draw wherever the row sits."""
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.maximum(row_id, 0))


def _draw(s: SamplerState, spec: DecodeSpec, logits: jax.Array):
    return sample_tokens(logits, _row_keys(s.key, s.step, s.row_id), s.temperature, s.top_p, spec.mode)


def _layout(spec: DecodeSpec, s: SamplerState, kv_heads: int) -> RolloutSharding:
    """This state's layout: its groups (prompt caches) and rows, whatever compaction left."""
    return spec.layout(s.prompt.valid.shape[0], kv_heads, rows=s.last.shape[0])


def _prefill(graphdef, params, batch: SamplerPrompts, key, max_new_tokens, temperature, top_p, *,
             spec: DecodeSpec) -> SamplerState:
    TRACES["prefill"] += 1
    model = nnx.merge(graphdef, constrain_params(params, spec.mesh))
    lm, inputs, n = model.language_model, batch.inputs, spec.num_generations
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
        stop_reason=jnp.zeros((rows,), jnp.int32), row_id=jnp.arange(rows, dtype=jnp.int32),
        step=jnp.zeros((), jnp.int32), max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
        temperature=jnp.asarray(temperature, jnp.float32), top_p=jnp.asarray(top_p, jnp.float32), key=key)
    state = lay.state(state)
    token, lp, slp = _draw(state, spec, logits)
    return lay.state(_record(state, spec, token, lp, slp, state.gen))


def _grow(gen: GenKV, length: int) -> GenKV:
    """The per-row cache padded (with zeros, masked until written) to `length` slots."""
    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)
    one = lambda kv, axis: tuple(pad(x, axis) for x in kv) if isinstance(kv, tuple) else pad(kv, axis)
    return GenKV(one(gen.k, -1), one(gen.v, -2))


def _gen_cache(lm, s: SamplerState, window: int, spec: DecodeSpec) -> GenKV:
    """The per-row cache at `window` slots: a new one before the first segment, else s.gen grown."""
    if s.gen is not None:
        return _grow(s.gen, window)
    return GenKV.zeros(lm, s.last.shape[0], window, s.prompt.k[0].dtype, spec.layer_loop)


def _live(s: SamplerState):
    return (s.step < s.max_new_tokens) & ~jnp.all(s.done)


def _decoder(graphdef, params, spec: DecodeSpec, s: SamplerState):
    """(the text decoder, this state's layout, the decode loop body), the weights gathered before any loop."""
    lm = nnx.merge(graphdef, constrain_params(params, spec.mesh)).language_model
    layers = layer_params(lm, spec.layer_loop)   # outside the loop: sliced once per call, not per step
    lay = _layout(spec, s, lm.cfg.num_key_value_heads)
    stacked = spec.layer_loop == "scan"

    def body(s: SamplerState):
        slot = s.step - 1   # the token fed now is continuation token step-1
        logits, gen = decode_step(lm, layers, s.last, s.base_position + slot, slot, s.prompt, s.gen)
        gen = GenKV(lay.cache(gen.k, lay.rows, stacked), lay.cache(gen.v, lay.rows, stacked))
        token, lp, slp = _draw(s, spec, lay.rows_(logits))
        return lay.state(_record(s, spec, token, lp, slp, gen))
    return lm, lay, body


def _run_window(body, s: SamplerState, window: int) -> SamplerState:
    return jax.lax.while_loop(lambda s: _live(s) & (s.step - 1 < window), body, s)


def _decode(graphdef, params, state: SamplerState, *, spec: DecodeSpec, keep_cache: bool = False) -> SamplerState:
    """The decode program: segments of `spec.windows`, each a while_loop whose body reads a cache of exactly
    its window. keep_cache (tests): return the per-row cache padded to gen_len; otherwise gen is None."""
    TRACES["decode"] += 1
    lm, lay, body = _decoder(graphdef, params, spec, state)
    windows = spec.windows

    def finish(s: SamplerState) -> SamplerState:
        gen = lay.state(dataclasses.replace(s, gen=_grow(s.gen, spec.gen_len))).gen if keep_cache else None
        return dataclasses.replace(s, gen=gen)

    def segment(k: int, s: SamplerState) -> SamplerState:
        s = _run_window(body, s, windows[k])
        if k + 1 == len(windows):
            return finish(s)
        grow = lambda s: segment(k + 1, lay.state(dataclasses.replace(s, gen=_gen_cache(lm, s, windows[k + 1],
                                                                                         spec))))
        return jax.lax.cond(_live(s), grow, finish, s)

    s = segment(0, lay.state(dataclasses.replace(state, gen=_gen_cache(lm, state, windows[0], spec))))
    return dataclasses.replace(s, stop_reason=jnp.where(s.stop_reason == STOP_NONE, STOP_LENGTH, s.stop_reason))


def _segment(graphdef, params, state: SamplerState, *, spec: DecodeSpec, window: int) -> SamplerState:
    """One decode segment as its own program (the compacting path): the cache grows to `window` slots (from
    none before the first), then the loop runs while a row is live and the next slot is inside it."""
    TRACES["segment"] += 1
    lm, lay, body = _decoder(graphdef, params, spec, state)
    return _run_window(body, lay.state(dataclasses.replace(state, gen=_gen_cache(lm, state, window, spec))), window)


def _compact(state: SamplerState, src_rows: jax.Array, src_groups: jax.Array, *, spec: DecodeSpec) -> SamplerState:
    """The rows `src_rows` [R'] (-1: a padding row, born stopped) of groups whose prompt caches are
    `src_groups` [B]: a gather of every per-row and per-group array (see `compaction_plan`)."""
    TRACES["compact"] += 1
    pad = src_rows < 0
    rows, groups = jnp.maximum(src_rows, 0), src_groups
    stacked = spec.layer_loop == "scan"
    axis = 1 if stacked else 0

    def take(kv, idx):
        one = lambda x: jnp.take(x, idx, axis=axis)
        return tuple(one(x) for x in kv) if isinstance(kv, tuple) else one(kv)
    s = state
    prompt = PromptKV(take(s.prompt.k, groups), take(s.prompt.v, groups), jnp.take(s.prompt.valid, groups, axis=0))
    gen = GenKV(take(s.gen.k, rows), take(s.gen.v, rows))
    per_row = {f: jnp.take(getattr(s, f), rows, axis=0) for f in s.ROW_FIELDS}
    per_row.update(done=per_row["done"] | pad, row_id=jnp.where(pad, -1, per_row["row_id"]))   # padding: stopped
    out = dataclasses.replace(s, prompt=prompt, gen=gen, **per_row)
    return _layout(spec, out, prompt.k[0].shape[1]).state(out)   # layer 0's [B, Hkv, Tp, hd]


def _merge(out: SampleOutput, s: SamplerState, *, spec: DecodeSpec) -> SampleOutput:
    """Write the state's rows into the full-size output at their row_id (padding rows are dropped); rows that
    never stopped get STOP_LENGTH (a row leaves the state only once it has stopped)."""
    TRACES["merge"] += 1
    idx = jnp.where(s.row_id < 0, out.lengths.shape[0], s.row_id)
    put = lambda buf, x: buf.at[idx].set(x, mode="drop")
    stop = jnp.where(s.stop_reason == STOP_NONE, STOP_LENGTH, s.stop_reason)
    lay = spec.layout(out.lengths.shape[0] // spec.num_generations, 1)
    return SampleOutput(*(lay.rows_(put(o, x)) for o, x in zip(
        (out.tokens, out.lengths, out.logprobs, out.sampling_logprobs, out.stop_reason),
        (s.tokens, s.lengths, s.logprobs, s.sampling_logprobs, stop))))


prefill_fn = jax.jit(_prefill, static_argnames=("graphdef", "spec"))
decode_fn = jax.jit(_decode, static_argnames=("graphdef", "spec", "keep_cache"), donate_argnames=("state",))
segment_fn = jax.jit(_segment, static_argnames=("graphdef", "spec", "window"), donate_argnames=("state",))
compact_fn = jax.jit(_compact, static_argnames=("spec",))   # a gather into new shapes: nothing to donate
merge_fn = jax.jit(_merge, static_argnames=("spec",), donate_argnames=("out",))


def compaction_plan(done: np.ndarray, group_prompt: np.ndarray, n: int, shards: int = 1):
    """Regroup the live rows (done [B*n] False) of groups holding prompts group_prompt [B] into B groups of
    n' < n rows, n' the smallest power-of-two fraction of n into which every prompt's live rows fit
    (prompt p takes ceil(live_p / n') groups, each with a copy of p's cache). Keeps B * n' a multiple of
    `shards` (the mesh's batch axes) when B * n was. Returns (src_rows [B*n'] with -1 for padding,
    src_groups [B], new group_prompt [B], n') or None when no smaller n' fits."""
    b = len(group_prompt)
    live = np.flatnonzero(~done)
    by_prompt: dict[int, list[int]] = {}
    for r in live:
        by_prompt.setdefault(int(group_prompt[r // n]), []).append(int(r))
    best, m = None, n // 2
    while m >= 1:
        if sum(-(-len(v) // m) for v in by_prompt.values()) > b or ((b * n) % shards == 0 and (b * m) % shards):
            break
        best, m = m, m // 2
    if best is None:
        return None
    first_group = {int(p): int(g) for g, p in reversed(list(enumerate(group_prompt)))}
    src_rows, src_groups, prompts = [], [], []
    for p, rows in by_prompt.items():
        for i in range(0, len(rows), best):
            chunk = rows[i:i + best]
            src_rows += chunk + [-1] * (best - len(chunk))
            src_groups.append(first_group[p])
            prompts.append(p)
    while len(src_groups) < b:          # unused groups: padding rows over any cache
        src_rows += [-1] * best
        src_groups.append(0)
        prompts.append(int(group_prompt[0]))
    return (np.asarray(src_rows, np.int32), np.asarray(src_groups, np.int32), np.asarray(prompts, np.int32), best)


def _empty_output(spec: DecodeSpec, rows: int) -> SampleOutput:
    lay = spec.layout(rows // spec.num_generations, 1)
    z = lambda shape, dtype, fill=0: lay.rows_(jnp.full(shape, fill, dtype))
    return SampleOutput(z((rows, spec.gen_len), jnp.int32, spec.pad_token_id), z((rows,), jnp.int32),
                        z((rows, spec.gen_len), jnp.float32), z((rows, spec.gen_len), jnp.float32),
                        z((rows,), jnp.int32))


empty_fn = jax.jit(_empty_output, static_argnames=("spec", "rows"))


def _compacting_decode(graphdef, params, state: SamplerState, spec: DecodeSpec, max_new: int) -> SampleOutput:
    """The segments one program each, from the host; between two, the stopped rows leave (one small
    device-to-host read of `done` per segment boundary)."""
    rows = int(state.last.shape[0])
    n, group_prompt = spec.num_generations, np.arange(rows // spec.num_generations)
    shards = 1 if spec.mesh is None else batch_shards(spec.mesh)
    out = empty_fn(spec=spec, rows=rows)
    s = state
    for k, window in enumerate(spec.windows):
        CALLS["segment"] += 1
        CALLS["segment_rows"] += int(s.last.shape[0])
        with warnings.catch_warnings():
            # The previous window's cache cannot hold the grown one (the token buffers are reused in place).
            warnings.filterwarnings("ignore", "Some donated buffers were not usable")
            s = segment_fn(graphdef, params, s, spec=spec, window=window)
        if k + 1 == len(spec.windows):
            break
        done, step = to_host(s.done), int(to_host(s.step))
        if done.all() or step >= max_new:
            break
        plan = compaction_plan(done, group_prompt, n, shards)
        if plan is not None:
            src_rows, src_groups, group_prompt, n = plan
            out = merge_fn(out, s, spec=spec)
            s = compact_fn(s, src_rows, src_groups, spec=spec)
    return merge_fn(out, s, spec=spec)


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
        if spec.compacts:
            out = _compacting_decode(graphdef, params, state, spec, max_new_tokens)
        else:
            s = decode_fn(graphdef, params, state, spec=spec)
            out = SampleOutput(s.tokens, s.lengths, s.logprobs, s.sampling_logprobs, s.stop_reason)
    del state
    cut = lambda x: x[:, :max_new_tokens]
    return SampleOutput(cut(out.tokens), out.lengths, cut(out.logprobs), cut(out.sampling_logprobs),
                        out.stop_reason)
