"""One decode step of the Qwen2.5-VL text decoder over a prompt-shared KV cache.

The prompt's keys/values are stored once per prompt ([L, B, Tp, ...]) and read by all of its `n` samples:
the n query rows of a prompt attend to it like n query positions of one sequence. Each sample's own
tokens go to a per-row cache ([L, B*n, N, ...]) written one slot per step in place. Both halves share one
softmax (scores are concatenated), so this is the same attention as over a replicated cache, without
copying the prompt n times or reading it n times per step.

The layer math mirrors `jaxr1.models.qwen2_5_vl.text.TextDecoder` (same ops, same casts); the greedy parity
tests against transformers cover both.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxr1.models.qwen2_5_vl.text import TextDecoder, mrope_cos_sin
from jaxr1.ops.layers import activation, apply_rope, linear, rms_norm

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
    def zeros(cls, lm: TextDecoder, rows: int, length: int, dtype, layer_loop: str) -> "GenKV":
        c = lm.cfg
        k_shape = (rows, c.num_key_value_heads, c.head_dim, length)
        v_shape = (rows, c.num_key_value_heads, length, c.head_dim)
        if layer_loop == "unroll":
            return cls(*(tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers))
                         for shape in (k_shape, v_shape)))
        return cls(*(jnp.zeros((c.num_hidden_layers, *shape), dtype) for shape in (k_shape, v_shape)))


def stacked_layer_params(lm: TextDecoder) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in vars(lm.layers).items() if isinstance(v, nnx.Param)}


def layer_params(lm: TextDecoder, layer_loop: str):
    """Stacked weights for "scan"; for "unroll", one dict per layer. Call it outside the decode loop: the
    per-layer slices are then made once per call rather than (as a scan's dynamic slices are on CPU) copied
    every step."""
    stacked = stacked_layer_params(lm)
    if layer_loop == "scan":
        return stacked
    # Per layer, with q/k/v and gate/up fused into one matmul each (fewer, larger GEMMs per step).
    cat = lambda names, i: jnp.concatenate([stacked[n][i] for n in names], axis=-1)
    return [dict(input_norm=stacked["input_norm"][i], post_attention_norm=stacked["post_attention_norm"][i],
                 qkv_kernel=cat(("q_kernel", "k_kernel", "v_kernel"), i),
                 qkv_bias=cat(("q_bias", "k_bias", "v_bias"), i),
                 o_kernel=stacked["o_kernel"][i], gate_up_kernel=cat(("gate_kernel", "up_kernel"), i),
                 down_kernel=stacked["down_kernel"][i])
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


def _layer(cfg, p, x, cos, sin, pk, pv, p_valid, gk, gv, slot, g_valid):
    """One decoder layer for one new token per row; writes its K/V into slot `slot` of gk/gv."""
    r, dtype = x.shape[0], x.dtype
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
    if "qkv_kernel" in p:
        q, k, v = jnp.split(linear(h, p["qkv_kernel"], p["qkv_bias"]), [heads * hd, (heads + kv_heads) * hd], axis=-1)
    else:
        q, k, v = (linear(h, p[f"{n}_kernel"], p[f"{n}_bias"]) for n in "qkv")
    q, k, v = q.reshape(r, 1, heads, hd), k.reshape(r, 1, kv_heads, hd), v.reshape(r, kv_heads, 1, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin).reshape(r, kv_heads, hd, 1)
    k, v = k.astype(gk.dtype), v.astype(gv.dtype)
    gk = jax.lax.dynamic_update_slice(gk, k, (0, 0, 0, slot))
    gv = jax.lax.dynamic_update_slice(gv, v, (0, 0, slot, 0))
    o = shared_prefix_attention(q[:, 0], pk.astype(dtype), pv.astype(dtype), p_valid, gk.astype(dtype),
                                gv.astype(dtype), g_valid)
    x = x + o @ p["o_kernel"]
    h = rms_norm(x, p["post_attention_norm"], cfg.rms_norm_eps)
    if "gate_up_kernel" in p:
        gate, up = jnp.split(h @ p["gate_up_kernel"], 2, axis=-1)
    else:
        gate, up = h @ p["gate_kernel"], h @ p["up_kernel"]
    x = x + (activation(cfg.hidden_act)(gate) * up) @ p["down_kernel"]
    return x, gk, gv, k, v


def decode_step(lm: TextDecoder, layers, tokens: jax.Array, positions: jax.Array, slot: jax.Array,
                prompt: PromptKV, gen: GenKV) -> tuple[jax.Array, GenKV]:
    """Feed tokens [R] at text positions [R] (same on all three M-RoPE channels) into gen slot `slot`;
    returns float32 logits [R, V] for the next token and the updated cache. `layers` from `layer_params`."""
    cfg = lm.cfg
    x = lm.embed_tokens(tokens)                                      # [R, D]
    r = x.shape[0]
    cos, sin = mrope_cos_sin(cfg, jnp.broadcast_to(positions[None, :, None], (3, r, 1)), x.dtype)
    unrolled = isinstance(gen.k, tuple)
    g_valid = jnp.arange(gen.v[0].shape[-2]) <= slot
    if unrolled:
        # Separate per-layer buffers in the while-loop carry: each update is in place, each read a plain operand.
        new_k, new_v = [], []
        for i, p in enumerate(layers):
            x, gk, gv, _, _ = _layer(cfg, p, x, cos, sin, prompt.k[i], prompt.v[i], prompt.valid, gen.k[i],
                                     gen.v[i], slot, g_valid)
            new_k.append(gk)
            new_v.append(gv)
        gen = GenKV(tuple(new_k), tuple(new_v))
    else:
        def body(carry, xs):
            x, gk_all, gv_all = carry
            p, pk, pv, i = xs
            gk, gv = gk_all[i], gv_all[i]
            x, _, _, k, v = _layer(cfg, p, x, cos, sin, pk, pv, prompt.valid, gk, gv, slot, g_valid)
            # Only this token's slot is written back into the stacked carry (in place).
            gk_all = jax.lax.dynamic_update_slice(gk_all, k[None], (i, 0, 0, 0, slot))
            gv_all = jax.lax.dynamic_update_slice(gv_all, v[None], (i, 0, 0, slot, 0))
            return (x, gk_all, gv_all), None

        xs = (layers, prompt.k, prompt.v, jnp.arange(cfg.num_hidden_layers))
        (x, gk_all, gv_all), _ = jax.lax.scan(body, (x, gen.k, gen.v), xs)
        gen = GenKV(gk_all, gv_all)
    x = rms_norm(x, lm.norm[...], cfg.rms_norm_eps)
    return lm.logits(x).astype(jnp.float32), gen
