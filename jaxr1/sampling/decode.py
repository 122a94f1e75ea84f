"""One decode step of a model family's text decoder over a prompt-shared KV cache.

The prompt's keys/values are stored once per prompt ([L, B, Tp, ...]) and read by all of its `n` samples:
the n query rows of a prompt attend to it like n query positions of one sequence. Each sample's own
tokens go to a per-row cache ([L, B*n, N, ...]) written one slot per step in place; N is the current
decode segment's window (the sampler grows it by powers of two), so a step reads only the live part. Both
halves share one softmax (scores are concatenated), so this is the same attention as over a replicated
cache, without copying the prompt n times or reading it n times per step.

There is no layer math here: each step runs the text decoder's own layer body (`lm.layer(p, x, cos, sin,
attend)`, the one its training / prefill forward runs) with `attend` = shared-prefix attention that also
writes this token's K/V into its slot, and the family's RoPE tables (`lm.cos_sin`). Any family whose
TextDecoder offers `layer`, `cos_sin`, `stacked_layer_params`, `embed_tokens`, `norm` and `logits` decodes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxr1.ops.layers import rms_norm

_NEG_INF = -1e30  # as jaxr1.ops.attention: finite, so a fully masked row is uniform, not NaN


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PromptKV:
    """Per layer [B, Hkv, Tp, hd] (head-major: the attention dots read it without a transpose). A tuple of
    per-layer arrays (layer_loop="unroll") or one stacked [L, ...] array (layer_loop="scan")."""
    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    valid: jax.Array  # [B, Tp] bool: real (not padding) prompt slots

    @classmethod
    def from_cache(cls, k: jax.Array, v: jax.Array, valid: jax.Array, layer_loop: str) -> "PromptKV":
        """From the model's [L, B, Tp, Hkv, hd] prefill cache (transposed once, not per step)."""
        k, v = jnp.swapaxes(k, 2, 3), jnp.swapaxes(v, 2, 3)
        if layer_loop == "unroll":
            k, v = tuple(k), tuple(v)
        return cls(k, v, valid)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenKV:
    """Per layer k [B*n, Hkv, hd, N] and v [B*n, Hkv, N, hd]; slot j holds continuation token j. Keys are
    stored slot-minor so the per-row score dot is a plain [g, hd] x [hd, N] product (on XLA:CPU about 3x
    faster than contracting the minor dim of [N, hd]); values stay [N, hd], the natural layout for
    probabilities @ values. Tuple or stacked, as PromptKV."""
    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, lm, rows: int, length: int, dtype, layer_loop: str) -> "GenKV":
        c = lm.cfg
        k_shape = (rows, c.num_key_value_heads, c.head_dim, length)
        v_shape = (rows, c.num_key_value_heads, length, c.head_dim)
        if layer_loop == "unroll":
            return cls(*(tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers))
                         for shape in (k_shape, v_shape)))
        return cls(*(jnp.zeros((c.num_hidden_layers, *shape), dtype) for shape in (k_shape, v_shape)))


def layer_params(lm, layer_loop: str):
    """Stacked weights for "scan"; for "unroll", one dict per layer. Call it outside the decode loop: the
    per-layer slices are then made once per call rather than (as a scan's dynamic slices are on CPU) copied
    every step."""
    stacked = lm.stacked_layer_params()
    if layer_loop == "scan":
        return stacked
    # Per layer, with q/k/v (+ biases where the family has them) and gate/up fused into one matmul each
    # (fewer, larger GEMMs per step); the family's projections read either form. Other weights as they are.
    fused = {"qkv_kernel": ("q_kernel", "k_kernel", "v_kernel"), "qkv_bias": ("q_bias", "k_bias", "v_bias"),
             "gate_up_kernel": ("gate_kernel", "up_kernel")}
    # Plain arrays only: an adapted kernel (LoraKernel) stays a separate x W + s (x A) B.
    fused = {k: names for k, names in fused.items() if all(isinstance(stacked.get(n), jax.Array) for n in names)}
    parts = {n for names in fused.values() for n in names}
    return [{**{k: v[i] for k, v in stacked.items() if k not in parts},
             **{k: jnp.concatenate([stacked[n][i] for n in names], axis=-1) for k, names in fused.items()}}
            for i in range(lm.cfg.num_hidden_layers)]


def shared_prefix_attention(q, pk, pv, p_valid, gk, gv, g_valid):
    """q [R, H, hd] with R = B*n; prompt pk/pv [B, Hkv, Tp, hd], p_valid [B, Tp]; own keys gk [R, Hkv, hd, N]
    and values gv [R, Hkv, N, hd], g_valid [N]. One softmax over both parts, in float32 as
    `jaxr1.ops.attention`: a shared running max, then (e_prompt @ v_prompt + e_own @ v_own) /
    (sum e_prompt + sum e_own), with no concatenated scores."""
    r, h, hd = q.shape
    b, hkv, tp, _ = pk.shape
    n, g = r // b, h // hkv
    scale = hd**-0.5
    # Prompt part: the n samples of a prompt are n * g query rows against that prompt's keys.
    to_prompt = lambda x: x.reshape(b, n, hkv, g, *x.shape[3:]).swapaxes(1, 2).reshape(b, hkv, n * g, *x.shape[3:])
    to_rows = lambda x: x.reshape(b, hkv, n, g, *x.shape[3:]).swapaxes(1, 2).reshape(r, hkv, g, *x.shape[3:])
    s_prompt = jnp.einsum("bhqd,bhsd->bhqs", to_prompt(q.reshape(r, hkv, g, hd)), pk,
                          preferred_element_type=jnp.float32) * scale
    s_prompt = jnp.where(p_valid[:, None, None, :], s_prompt, _NEG_INF)
    s_own = jnp.einsum("rhgd,rhds->rhgs", q.reshape(r, hkv, g, hd), gk, preferred_element_type=jnp.float32) * scale
    s_own = jnp.where(g_valid, s_own, _NEG_INF)
    m = jnp.maximum(to_rows(s_prompt.max(-1)), s_own.max(-1))                    # [R, Hkv, g]
    e_prompt = jnp.exp(s_prompt - to_prompt(m)[..., None])
    e_own = jnp.exp(s_own - m[..., None])
    denom = to_rows(e_prompt.sum(-1)) + e_own.sum(-1)
    o = to_rows(jnp.einsum("bhqs,bhsd->bhqd", e_prompt.astype(pv.dtype), pv, preferred_element_type=jnp.float32))
    o = o + jnp.einsum("rhgs,rhsd->rhgd", e_own.astype(gv.dtype), gv, preferred_element_type=jnp.float32)
    return (o / denom[..., None]).reshape(r, h * hd).astype(q.dtype)


def _layer(lm, p, x, cos, sin, pk, pv, p_valid, gk, gv, slot, g_valid):
    """The decoder's layer body for one new token per row (x [R, D], cos/sin [R, hd]), attending over the
    prompt's cache and the row's own; writes its K/V into slot `slot` of gk [R, Hkv, hd, N] / gv [R, Hkv, N, hd]."""
    r, dtype = x.shape[0], x.dtype

    def attend(q, k, v):   # q [R, H, hd], k / v [R, Hkv, hd]
        k = k.reshape(r, k.shape[1], k.shape[2], 1).astype(gk.dtype)     # slot-minor
        v = v.reshape(r, v.shape[1], 1, v.shape[2]).astype(gv.dtype)
        gk_new = jax.lax.dynamic_update_slice(gk, k, (0, 0, 0, slot))
        gv_new = jax.lax.dynamic_update_slice(gv, v, (0, 0, slot, 0))
        o = shared_prefix_attention(q, pk.astype(dtype), pv.astype(dtype), p_valid, gk_new.astype(dtype),
                                    gv_new.astype(dtype), g_valid)
        return o, (gk_new, gv_new, k, v)

    x, (gk, gv, k, v) = lm.layer(p, x, cos, sin, attend)
    return x, gk, gv, k, v


def decode_step(lm, layers, tokens: jax.Array, positions: jax.Array, slot: jax.Array,
                prompt: PromptKV, gen: GenKV) -> tuple[jax.Array, GenKV]:
    """Feed tokens [R] at text positions [R] (same on all three M-RoPE channels) into gen slot `slot`;
    returns float32 logits [R, V] for the next token and the updated cache. `layers` from `layer_params`."""
    cfg = lm.cfg
    x = lm.embed_tokens(tokens)                                      # [R, D]
    r = x.shape[0]
    cos, sin = lm.cos_sin(jnp.broadcast_to(positions[None, :, None], (3, r, 1)), x.dtype)
    cos, sin = cos[:, 0], sin[:, 0]                                  # [R, hd]
    unrolled = isinstance(gen.k, tuple)
    g_valid = jnp.arange(gen.v[0].shape[-2]) <= slot
    if unrolled:
        # Separate per-layer buffers in the while-loop carry: each update is in place, each read a plain operand.
        new_k, new_v = [], []
        for i, p in enumerate(layers):
            x, gk, gv, _, _ = _layer(lm, p, x, cos, sin, prompt.k[i], prompt.v[i], prompt.valid, gen.k[i],
                                     gen.v[i], slot, g_valid)
            new_k.append(gk)
            new_v.append(gv)
        gen = GenKV(tuple(new_k), tuple(new_v))
    else:
        def body(carry, xs):
            x, gk_all, gv_all = carry
            p, pk, pv, i = xs
            gk, gv = gk_all[i], gv_all[i]
            x, _, _, k, v = _layer(lm, p, x, cos, sin, pk, pv, prompt.valid, gk, gv, slot, g_valid)
            # Only this token's slot is written back into the stacked carry (in place).
            gk_all = jax.lax.dynamic_update_slice(gk_all, k[None], (i, 0, 0, 0, slot))
            gv_all = jax.lax.dynamic_update_slice(gv_all, v[None], (i, 0, 0, slot, 0))
            return (x, gk_all, gv_all), None

        xs = (layers, prompt.k, prompt.v, jnp.arange(cfg.num_hidden_layers))
        (x, gk_all, gv_all), _ = jax.lax.scan(body, (x, gen.k, gen.v), xs)
        gen = GenKV(gk_all, gv_all)
    x = rms_norm(x, lm.norm[...], cfg.rms_norm_eps)
    return lm.logits(x).astype(jnp.float32), gen
