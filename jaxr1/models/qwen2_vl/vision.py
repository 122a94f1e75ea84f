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
from jaxr1.models.qwen2_5_vl.vision import axial_rotary, merge_patches, stacked_params, vision_attention
from jaxr1.models.qwen2_vl.config import VisionConfig
from jaxr1.ops.layers import activation, layer_norm, linear

_NORM_EPS = 1e-6  # transformers hard-codes LayerNorm(eps=1e-6) in the vision blocks and merger
# Our names of a LayerNorm block's (norm1 scale, norm2 scale, MLP fc1, MLP fc2) weights; the norm biases are
# norm1_bias / norm2_bias, the MLP's `{name}_kernel` / `{name}_bias`.
BLOCK_NAMES = ("norm1", "norm2", "up", "down")


def layer_norm_block(x: jax.Array, p: dict[str, jax.Array], cos: jax.Array, sin: jax.Array, segments: jax.Array,
                     heads: int, act, dtype, names: tuple[str, str, str, str] = BLOCK_NAMES,
                     implementation: str = "xla") -> jax.Array:
    """One full-attention vision block (pre-LayerNorm attention, pre-LayerNorm fc1 -> act -> fc2 MLP), as
    Qwen2-VL's and Qwen3-VL's towers run it; `names` are the block's parameter names."""
    norm1, norm2, fc1, fc2 = names
    h = layer_norm(x, p[norm1], p["norm1_bias"], _NORM_EPS)
    x = x + vision_attention(h, p, cos, sin, segments, heads, dtype, implementation)
    h = layer_norm(x, p[norm2], p["norm2_bias"], _NORM_EPS)
    h = act(linear(h, p[f"{fc1}_kernel"], p[f"{fc1}_bias"]))
    return x + linear(h, p[f"{fc2}_kernel"], p[f"{fc2}_bias"])


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
        self.attention = "xla"   # the kernel of every block (jaxr1.models.set_attention)
        self.patch_embed = param(rngs, (cfg.patch_dim, cfg.hidden_size), dtype)  # Conv3d as a matmul
        self.blocks = VisionBlocks(cfg, dtype, rngs)
        self.merger = PatchMerger(cfg, dtype, rngs)

    def __call__(self, patches: jax.Array, rope_hw: jax.Array, window_ids: jax.Array, frame_ids: jax.Array,
                 restore: jax.Array, *, remat: bool = False, window_slots: jax.Array | None = None) -> jax.Array:
        """patches [S, P, patch_dim] -> merged features [S, P/4, out_hidden] (processor order). window_ids and
        window_slots are accepted for the shared call signature and unused: there is no window attention."""
        del window_ids, window_slots
        cfg = self.cfg
        dtype = self.patch_embed[...].dtype
        x = patches.astype(dtype) @ self.patch_embed[...]
        cos, sin = axial_rotary(cfg.head_dim, cfg.rope_theta, rope_hw)
        segments = frame_ids + 1   # 0 = pad patch
        act = activation(cfg.hidden_act)

        def block(x, p):
            return layer_norm_block(x, p, cos, sin, segments, cfg.num_heads, act, dtype,
                                    implementation=self.attention), None

        if remat:
            block = jax.checkpoint(block)
        x, _ = jax.lax.scan(block, x, stacked_params(self.blocks))
        m = self.merger
        return merge_patches(m, layer_norm(x, m.ln_q[...], m.ln_q_bias[...], _NORM_EPS), restore, cfg.merge_unit)
