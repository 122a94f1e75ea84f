"""Qwen2 text decoder with M-RoPE: embed, for each layer GQA attention + SwiGLU MLP, norm, logits.

One forward serves training (no cache), prefill (write a prompt into the cache) and decode (one token per
row). Cache slots are positions in a preallocated [layers, B, S, kv_heads, head_dim] buffer; a query at slot
i sees slots j <= i whose `kv_valid` flag is set, so left padding and finished rows need no special cases.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxr1.models.qwen2_5_vl.config import TextConfig
from jaxr1.models.qwen2_5_vl.params_init import param
from jaxr1.ops.attention import attention
from jaxr1.ops.layers import activation, apply_rope, linear, rms_norm


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, Hkv, D]
    v: jax.Array

    @classmethod
    def zeros(cls, cfg: TextConfig, batch: int, length: int, dtype) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


class DecoderLayers(nnx.Module):
    def __init__(self, cfg: TextConfig, dtype, rngs: nnx.Rngs | None):
        L, D, I = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.input_norm = param(rngs, (L, D), dtype, "ones")
        self.post_attention_norm = param(rngs, (L, D), dtype, "ones")
        self.q_kernel = param(rngs, (L, D, q), dtype)
        self.q_bias = param(rngs, (L, q), dtype, "zeros")
        self.k_kernel = param(rngs, (L, D, kv), dtype)
        self.k_bias = param(rngs, (L, kv), dtype, "zeros")
        self.v_kernel = param(rngs, (L, D, kv), dtype)
        self.v_bias = param(rngs, (L, kv), dtype, "zeros")
        self.o_kernel = param(rngs, (L, q, D), dtype)
        self.gate_kernel = param(rngs, (L, D, I), dtype)
        self.up_kernel = param(rngs, (L, D, I), dtype)
        self.down_kernel = param(rngs, (L, I, D), dtype)


def mrope_cos_sin(cfg: TextConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] -> cos, sin [B, T, head_dim]; frequency i takes its position from channel
    (section index of i) % 3, per `mrope_section` (transformers' recomposition)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    channel = np.concatenate([np.full(n, i % 3) for i, n in enumerate(cfg.mrope_section)])
    pos = positions.astype(jnp.float32)[channel]                        # [hd/2, B, T]
    freqs = jnp.moveaxis(pos, 0, -1) * inv_freq                         # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class TextDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, tie_word_embeddings: bool, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), dtype)
        self.layers = DecoderLayers(cfg, dtype, rngs)
        self.norm = param(rngs, (cfg.hidden_size,), dtype, "ones")
        # Tied: logits use the embedding itself, never a copy.
        self.lm_head = None if tie_word_embeddings else param(rngs, (cfg.hidden_size, cfg.vocab_size), dtype)

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], input_ids, axis=0)

    def lm_head_kernel(self) -> jax.Array:
        """[D, V] output projection (the transposed embedding when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        return hidden @ self.lm_head_kernel()

    def __call__(self, embeds: jax.Array, positions: jax.Array, kv_valid: jax.Array, *,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                 remat: bool = False, attn_impl: str = "xla", collect_hidden: bool = False):
        """embeds [B, T, D], positions [3, B, T]; kv_valid [B, S] marks usable key slots (S = T without a
        cache, else the cache length, already including this call's tokens). Returns final-norm hidden
        states [B, T, D] and the updated cache (and, with collect_hidden, each layer's output [L, B, T, D])."""
        cfg = self.cfg
        b, t, _ = embeds.shape
        dtype = embeds.dtype
        cos, sin = mrope_cos_sin(cfg, positions, dtype)
        q_slot = cache_index + jnp.arange(t)
        kv_slot = jnp.arange(kv_valid.shape[1])
        mask = (kv_slot[None, :] <= q_slot[:, None])[None] & kv_valid[:, None, :].astype(bool)   # [B, T, S]
        heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        act = activation(cfg.hidden_act)

        def layer(x, xs):
            p, ck, cv = xs
            h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
            q = linear(h, p["q_kernel"], p["q_bias"]).reshape(b, t, heads, hd)
            k = linear(h, p["k_kernel"], p["k_bias"]).reshape(b, t, kv_heads, hd)
            v = linear(h, p["v_kernel"], p["v_bias"]).reshape(b, t, kv_heads, hd)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if ck is not None:
                k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
                v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
            o = attention(q, k.astype(dtype), v.astype(dtype), mask, implementation=attn_impl)
            x = x + o.reshape(b, t, heads * hd) @ p["o_kernel"]
            h = rms_norm(x, p["post_attention_norm"], cfg.rms_norm_eps)
            x = x + (act(h @ p["gate_kernel"]) * (h @ p["up_kernel"])) @ p["down_kernel"]
            return x, ((k, v) if ck is not None else None, x if collect_hidden else None)

        if remat:
            layer = jax.checkpoint(layer)
        stacked = {k: v[...] for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)}
        xs = (stacked, None, None) if cache is None else (stacked, cache.k, cache.v)
        x, (new_kv, per_layer) = jax.lax.scan(layer, embeds, xs)
        new_cache = None if cache is None else KVCache(*new_kv)
        out = rms_norm(x, self.norm[...], cfg.rms_norm_eps)
        return (out, new_cache, per_layer) if collect_hidden else (out, new_cache)
