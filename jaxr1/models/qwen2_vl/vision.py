"""Qwen2-VL vision tower: patch embedding, 2D rotary, full-attention blocks (LayerNorm, fc1/fc2 MLP), merger.

Same slot layout and call as the Qwen2.5-VL tower (`qwen2_5_vl.vision.VisionTower`), so the model, the
sampler and the trainer drive either one. With `window_size=None` the layout keeps processor order and one
window per frame; attention uses the frame ids (transformers' per-frame `cu_seqlens`), never crossing images.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxr1.models.qwen2_5_vl.params_init import param
from jaxr1.models.qwen2_5_vl.vision import axial_rotary, merge_patches
from jaxr1.models.qwen2_vl.config import VisionConfig
from jaxr1.ops.attention import attention
from jaxr1.ops.layers import activation, apply_rope, linear

_NORM_EPS = 1e-6  # transformers hard-codes LayerNorm(eps=1e-6) in the vision blocks and merger


def layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float = _NORM_EPS) -> jax.Array:
    # torch's LayerNorm computes statistics and the affine in float32 for low-precision inputs, then casts.
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


def vision_activation(name: str):
    # transformers' QuickGELUActivation: x * sigmoid(1.702 x) (Qwen2-VL's default); other names as ops.layers.
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    return activation(name)


class VisionBlocks(nnx.Module):
    """`depth` blocks with weights stacked on axis 0. HF's mlp.fc1 / mlp.fc2 are named up / down here (the
    gated tower's column- and row-parallel halves), so the sharding rules for `visual/blocks/*` apply as is."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs | None):
        L, E, I = cfg.depth, cfg.hidden_size, cfg.intermediate_size
        self.norm1 = param(rngs, (L, E), dtype, "ones")
        self.norm1_bias = param(rngs, (L, E), dtype, "zeros")
        self.norm2 = param(rngs, (L, E), dtype, "ones")
        self.norm2_bias = param(rngs, (L, E), dtype, "zeros")
        self.qkv_kernel = param(rngs, (L, E, 3 * E), dtype)
        self.qkv_bias = param(rngs, (L, 3 * E), dtype, "zeros")
        self.proj_kernel = param(rngs, (L, E, E), dtype)
        self.proj_bias = param(rngs, (L, E), dtype, "zeros")
        self.up_kernel = param(rngs, (L, E, I), dtype)
        self.up_bias = param(rngs, (L, I), dtype, "zeros")
        self.down_kernel = param(rngs, (L, I, E), dtype)
        self.down_bias = param(rngs, (L, E), dtype, "zeros")


class PatchMerger(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs | None):
        E, M = cfg.hidden_size, cfg.hidden_size * cfg.merge_unit
        self.ln_q = param(rngs, (E,), dtype, "ones")
        self.ln_q_bias = param(rngs, (E,), dtype, "zeros")
        self.fc1_kernel = param(rngs, (M, M), dtype)
        self.fc1_bias = param(rngs, (M,), dtype, "zeros")
        self.fc2_kernel = param(rngs, (M, cfg.out_hidden_size), dtype)
        self.fc2_bias = param(rngs, (cfg.out_hidden_size,), dtype, "zeros")


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.patch_embed = param(rngs, (cfg.patch_dim, cfg.hidden_size), dtype)  # Conv3d as a matmul
        self.blocks = VisionBlocks(cfg, dtype, rngs)
        self.merger = PatchMerger(cfg, dtype, rngs)

    def __call__(self, patches: jax.Array, rope_hw: jax.Array, window_ids: jax.Array, frame_ids: jax.Array,
                 restore: jax.Array, *, remat: bool = False) -> jax.Array:
        """patches [S, P, patch_dim] -> merged features [S, P/4, out_hidden] (processor order). window_ids is
        accepted for the shared call signature and unused: there is no window attention."""
        del window_ids
        cfg = self.cfg
        dtype = self.patch_embed[...].dtype
        x = patches.astype(dtype) @ self.patch_embed[...]
        cos, sin = axial_rotary(cfg.head_dim, cfg.rope_theta, rope_hw)
        mask = frame_ids[:, :, None] == frame_ids[:, None, :]
        act = vision_activation(cfg.hidden_act)
        heads, hd = cfg.num_heads, cfg.head_dim

        def block(x, p):
            s, n, _ = x.shape
            h = layer_norm(x, p["norm1"], p["norm1_bias"])
            qkv = linear(h, p["qkv_kernel"], p["qkv_bias"]).reshape(s, n, 3, heads, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            # transformers applies the vision rotary in float32 and casts back.
            q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dtype)
            k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dtype)
            o = attention(q, k, v, mask).reshape(s, n, heads * hd)
            x = x + linear(o, p["proj_kernel"], p["proj_bias"])
            h = layer_norm(x, p["norm2"], p["norm2_bias"])
            return x + linear(act(linear(h, p["up_kernel"], p["up_bias"])), p["down_kernel"], p["down_bias"]), None

        if remat:
            block = jax.checkpoint(block)
        stacked = {k: v[...] for k, v in vars(self.blocks).items() if isinstance(v, nnx.Param)}
        x, _ = jax.lax.scan(block, x, stacked)
        m = self.merger
        return merge_patches(m, layer_norm(x, m.ln_q[...], m.ln_q_bias[...]), restore, cfg.merge_unit)
