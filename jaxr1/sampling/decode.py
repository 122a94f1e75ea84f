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
    k: jax.Array      # [L, B, Tp, Hkv, hd]
    v: jax.Array
    valid: jax.Array  # [B, Tp] bool: real (not padding) prompt slots


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenKV:
    k: jax.Array  # [L, B*n, N, Hkv, hd]; slot j holds continuation token j
    v: jax.Array

    @classmethod
    def zeros(cls, lm: TextDecoder, rows: int, length: int, dtype) -> "GenKV":
        c = lm.cfg
        shape = (c.num_hidden_layers, rows, length, c.num_key_value_heads, c.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def stacked_layer_params(lm: TextDecoder) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in vars(lm.layers).items() if isinstance(v, nnx.Param)}


def shared_prefix_attention(q, pk, pv, p_valid, gk, gv, g_valid):
    """q [R, H, hd] with R = B*n; prompt pk/pv [B, Tp, Hkv, hd], p_valid [B, Tp]; own gk/gv [R, N, Hkv, hd],
    g_valid [N]. Scores and softmax in float32 as `jaxr1.ops.attention`."""
    r, h, hd = q.shape
    b, tp, hkv, _ = pk.shape
    n, g = r // b, h // hkv
    scale = hd**-0.5
    s_prompt = jnp.einsum("bnhgd,bshd->bnhgs", q.reshape(b, n, hkv, g, hd), pk,
                          preferred_element_type=jnp.float32) * scale
    s_prompt = jnp.where(p_valid[:, None, None, None, :], s_prompt, _NEG_INF).reshape(r, hkv, g, tp)
    s_own = jnp.einsum("rhgd,rshd->rhgs", q.reshape(r, hkv, g, hd), gk, preferred_element_type=jnp.float32) * scale
    s_own = jnp.where(g_valid, s_own, _NEG_INF)
    probs = jax.nn.softmax(jnp.concatenate([s_prompt, s_own], axis=-1), axis=-1).astype(pv.dtype)
    o = jnp.einsum("bnhgs,bshd->bnhgd", probs[..., :tp].reshape(b, n, hkv, g, tp), pv,
                   preferred_element_type=jnp.float32).reshape(r, h * hd)
    o = o + jnp.einsum("rhgs,rshd->rhgd", probs[..., tp:], gv, preferred_element_type=jnp.float32).reshape(r, h * hd)
    return o.astype(q.dtype)


def decode_step(lm: TextDecoder, tokens: jax.Array, positions: jax.Array, slot: jax.Array, prompt: PromptKV,
                gen: GenKV) -> tuple[jax.Array, GenKV]:
    """Feed tokens [R] at text positions [R] (same on all three M-RoPE channels) into gen slot `slot`;
    returns float32 logits [R, V] for the next token and the updated cache."""
    cfg = lm.cfg
    x = lm.embed_tokens(tokens)                                      # [R, D]
    r, dtype = x.shape[0], x.dtype
    cos, sin = mrope_cos_sin(cfg, jnp.broadcast_to(positions[None, :, None], (3, r, 1)), dtype)
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    g_valid = jnp.arange(gen.k.shape[2]) <= slot
    act = activation(cfg.hidden_act)

    def layer(carry, xs):
        x, gk_all, gv_all = carry
        p, pk, pv, idx = xs
        h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
        q = linear(h, p["q_kernel"], p["q_bias"]).reshape(r, 1, heads, hd)
        k = linear(h, p["k_kernel"], p["k_bias"]).reshape(r, 1, kv_heads, hd)
        v = linear(h, p["v_kernel"], p["v_bias"]).reshape(r, 1, kv_heads, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Write only this token's slot: the stacked cache is a loop carry, so XLA updates it in place.
        gk_all = jax.lax.dynamic_update_slice(gk_all, k[None].astype(gk_all.dtype), (idx, 0, slot, 0, 0))
        gv_all = jax.lax.dynamic_update_slice(gv_all, v[None].astype(gv_all.dtype), (idx, 0, slot, 0, 0))
        gk = jax.lax.dynamic_index_in_dim(gk_all, idx, keepdims=False).astype(dtype)
        gv = jax.lax.dynamic_index_in_dim(gv_all, idx, keepdims=False).astype(dtype)
        o = shared_prefix_attention(q[:, 0], pk.astype(dtype), pv.astype(dtype), prompt.valid, gk, gv, g_valid)
        x = x + o @ p["o_kernel"]
        h = rms_norm(x, p["post_attention_norm"], cfg.rms_norm_eps)
        x = x + (act(h @ p["gate_kernel"]) * (h @ p["up_kernel"])) @ p["down_kernel"]
        return (x, gk_all, gv_all), None

    xs = (stacked_layer_params(lm), prompt.k, prompt.v, jnp.arange(cfg.num_hidden_layers))
    (x, gk_all, gv_all), _ = jax.lax.scan(layer, (x, gen.k, gen.v), xs)
    x = rms_norm(x, lm.norm[...], cfg.rms_norm_eps)
    return lm.logits(x).astype(jnp.float32), GenKV(gk_all, gv_all)
