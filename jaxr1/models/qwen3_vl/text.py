"""Qwen3 text decoder with interleaved M-RoPE and DeepStack: embed, per layer GQA attention with per-head q/k
RMSNorm + SwiGLU MLP, norm, logits.

Same interface and cache semantics as `jaxr1.models.qwen2_5_vl.text.TextDecoder` (it reuses its KVCache):
one forward serves training, prefill and decode. DeepStack: visual features from intermediate vision layers
are added to the residual stream at the image-token positions after each of the first n decoder layers.

The layer body is Qwen2's `decoder_layer` (same pre-norm attention + SwiGLU MLP) with this family's
`project_qkv` (no q/k/v bias, per-head q/k RMSNorm, interleaved M-RoPE tables from `mrope_cos_sin`):
`TextDecoder.layer` is what training, prefill and the sampler's decode step all run. DeepStack is an add
after the body at image-token positions, so it only concerns prompt (prefill / training) positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxr1.models.qwen2_5_vl.params_init import param
from jaxr1.models.qwen2_5_vl.text import KVCache, cache_attention, decoder_layer, qkv_linear
from jaxr1.models.qwen3_vl.config import TextConfig
from jaxr1.ops.layers import apply_rope, rms_norm

__all__ = ["KVCache", "TextDecoder", "mrope_cos_sin", "project_qkv"]


class DecoderLayers(nnx.Module):
    def __init__(self, cfg: TextConfig, dtype, rngs: nnx.Rngs | None):
        L, D, I, hd = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        self.input_norm = param(rngs, (L, D), dtype, "ones")
        self.post_attention_norm = param(rngs, (L, D), dtype, "ones")
        self.q_kernel = param(rngs, (L, D, q), dtype)
        self.k_kernel = param(rngs, (L, D, kv), dtype)
        self.v_kernel = param(rngs, (L, D, kv), dtype)
        self.o_kernel = param(rngs, (L, q, D), dtype)
        self.q_norm = param(rngs, (L, hd), dtype, "ones")
        self.k_norm = param(rngs, (L, hd), dtype, "ones")
        self.gate_kernel = param(rngs, (L, D, I), dtype)
        self.up_kernel = param(rngs, (L, D, I), dtype)
        self.down_kernel = param(rngs, (L, I, D), dtype)


def mrope_channels(cfg: TextConfig) -> np.ndarray:
    """Position channel (0 = t, 1 = h, 2 = w) of each of the head_dim/2 frequencies, interleaved t,h,w,t,h,w...
    as transformers' `recomposition_frequencies`: h takes slice(1, 3 * section[1], 3), w slice(2, 3 *
    section[2], 3), t the rest (so the tail past 3 * section is t)."""
    j = np.arange(cfg.head_dim // 2)
    ch = np.zeros_like(j)
    ch[(j % 3 == 1) & (j < 3 * cfg.mrope_section[1])] = 1
    ch[(j % 3 == 2) & (j < 3 * cfg.mrope_section[2])] = 2
    return ch


def mrope_cos_sin(cfg: TextConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] -> cos, sin [B, T, head_dim] (frequencies in float32, cast as transformers)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    pos = positions.astype(jnp.float32)[mrope_channels(cfg)]           # [hd/2, B, T]
    freqs = jnp.moveaxis(pos, 0, -1) * inv_freq                         # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def project_qkv(cfg: TextConfig, p: dict, h: jax.Array, cos: jax.Array, sin: jax.Array):
    """The Qwen3-specific part of attention: q/k/v projections (no bias; separate or fused `qkv_kernel`),
    per-head RMSNorm of q and k, RoPE. h [..., D], cos/sin [..., hd] -> q [..., H, hd], k and v [..., Hkv, hd]."""
    q, k, v = qkv_linear(cfg, p, h)
    q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


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

    def cos_sin(self, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        """Interleaved M-RoPE tables for positions [3, B, T] -> [B, T, head_dim]."""
        return mrope_cos_sin(self.cfg, positions, dtype)

    def layer(self, p: dict, x: jax.Array, cos: jax.Array, sin: jax.Array, attend):
        """The layer body with Qwen3's q/k/v projection (see `jaxr1.models.qwen2_5_vl.text.decoder_layer`)."""
        return decoder_layer(self.cfg, p, x, cos, sin, attend, project_qkv)

    def stacked_layer_params(self) -> dict[str, jax.Array]:
        """Per-layer weights stacked [L, ...] by name."""
        return {k: v[...] for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)}

    def __call__(self, embeds: jax.Array, positions: jax.Array, kv_valid: jax.Array, *,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0, remat: bool = False,
                 attn_impl: str = "xla", collect_hidden: bool = False,
                 deepstack: tuple[jax.Array, jax.Array] | None = None):
        """embeds [B, T, D], positions [3, B, T]; kv_valid [B, S] marks usable key slots (S = T without a
        cache, else the cache length, already including this call's tokens). deepstack = (index [B, T]: row
        of `features` for each image-token position, -1 elsewhere; features [n, N, D]): after layer i < n,
        features[i][index] is added at those positions. Returns final-norm hidden states [B, T, D] and the
        updated cache (and, with collect_hidden, each layer's output [L, B, T, D] before the DeepStack add,
        as transformers' output_hidden_states)."""
        cfg = self.cfg
        b, t, _ = embeds.shape
        dtype = embeds.dtype
        cos, sin = mrope_cos_sin(cfg, positions, dtype)
        q_slot = cache_index + jnp.arange(t)
        kv_slot = jnp.arange(kv_valid.shape[1])
        mask = (kv_slot[None, :] <= q_slot[:, None])[None] & kv_valid[:, None, :].astype(bool)   # [B, T, S]
        if deepstack is not None:
            ds_index, ds_feats = deepstack
            ds_where = (ds_index >= 0)[..., None]
            ds_index = jnp.maximum(ds_index, 0)

        def layer(x, xs):
            p, ck, cv, i = xs
            attend = cache_attention(mask, ck, cv, cache_index, dtype, attn_impl)
            x, new_kv = self.layer(p, x, cos, sin, attend)
            out = x
            if deepstack is not None:
                # One scan body for all layers: layers >= n select the unchanged stream.
                feats = jnp.take(ds_feats[jnp.minimum(i, ds_feats.shape[0] - 1)], ds_index, axis=0)
                x = jnp.where(ds_where & (i < ds_feats.shape[0]), x + feats.astype(dtype), x)
            return x, (new_kv, out if collect_hidden else None)

        if remat:
            layer = jax.checkpoint(layer)
        stacked = self.stacked_layer_params()
        idx = jnp.arange(cfg.num_hidden_layers)
        xs = (stacked, None, None, idx) if cache is None else (stacked, cache.k, cache.v, idx)
        x, (new_kv, per_layer) = jax.lax.scan(layer, embeds, xs)
        new_cache = None if cache is None else KVCache(*new_kv)
        out = rms_norm(x, self.norm[...], cfg.rms_norm_eps)
        return (out, new_cache, per_layer) if collect_hidden else (out, new_cache)
