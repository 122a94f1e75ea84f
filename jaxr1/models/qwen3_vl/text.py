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
from jaxr1.models.cache import KVCache
from jaxr1.models.qwen2_5_vl.text import qkv_linear
from jaxr1.models.qwen2_5_vl.text import TextDecoder as Qwen2TextDecoder
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


class TextDecoder(Qwen2TextDecoder):
    """Qwen2's decoder forward (cache, DeepStack, kernels) with Qwen3's layer weights, q/k/v projection and
    interleaved M-RoPE tables."""
    layer_weights = DecoderLayers
    project = staticmethod(project_qkv)
    rope = staticmethod(mrope_cos_sin)
