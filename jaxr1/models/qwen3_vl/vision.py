"""Qwen3-VL vision tower: patch embedding + learned (interpolated) position embedding, 2D rotary, full-attention
LayerNorm blocks with a gelu-tanh MLP, the patch merger, and the DeepStack mergers.

Runs on the slot layout of `vision_index.build_layout` ([slots, patches, ...], frame ids as attention
segments), so every shape is static and attention stays inside its image and frame.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxr1.models.qwen2_5_vl.params_init import param
from jaxr1.models.qwen2_5_vl.vision import axial_rotary, stacked_params
from jaxr1.models.qwen2_vl.vision import layer_norm_block
from jaxr1.models.qwen3_vl.config import VisionConfig
from jaxr1.ops.layers import activation, layer_norm, linear

_NORM_EPS = 1e-6  # transformers hard-codes eps=1e-6 in the vision blocks and mergers
_BLOCK_NAMES = ("norm1_scale", "norm2_scale", "fc1", "fc2")   # see qwen2_vl.vision.layer_norm_block


class VisionBlocks(nnx.Module):
    """`depth` blocks with weights stacked on axis 0."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs | None):
        L, E, I = cfg.depth, cfg.hidden_size, cfg.intermediate_size
        self.norm1_scale = param(rngs, (L, E), dtype, "ones")
        self.norm1_bias = param(rngs, (L, E), dtype, "zeros")
        self.norm2_scale = param(rngs, (L, E), dtype, "ones")
        self.norm2_bias = param(rngs, (L, E), dtype, "zeros")
        self.qkv_kernel = param(rngs, (L, E, 3 * E), dtype)
        self.qkv_bias = param(rngs, (L, 3 * E), dtype, "zeros")
        self.proj_kernel = param(rngs, (L, E, E), dtype)
        self.proj_bias = param(rngs, (L, E), dtype, "zeros")
        self.fc1_kernel = param(rngs, (L, E, I), dtype)
        self.fc1_bias = param(rngs, (L, I), dtype, "zeros")
        self.fc2_kernel = param(rngs, (L, I, E), dtype)
        self.fc2_bias = param(rngs, (L, E), dtype, "zeros")


class PatchMerger(nnx.Module):
    """LayerNorm, 2x2 spatial merge, fc1 + GELU + fc2. `postshuffle` (the DeepStack mergers) normalises the
    merged 4E vector instead of each patch. `count` stacks that many mergers on axis 0."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs | None, *, postshuffle: bool = False,
                 count: int | None = None):
        E, M = cfg.hidden_size, cfg.hidden_size * cfg.merge_unit
        lead = () if count is None else (count,)
        self.postshuffle = postshuffle
        self.norm_scale = param(rngs, (*lead, M if postshuffle else E), dtype, "ones")
        self.norm_bias = param(rngs, (*lead, M if postshuffle else E), dtype, "zeros")
        self.fc1_kernel = param(rngs, (*lead, M, M), dtype)
        self.fc1_bias = param(rngs, (*lead, M), dtype, "zeros")
        self.fc2_kernel = param(rngs, (*lead, M, cfg.out_hidden_size), dtype)
        self.fc2_bias = param(rngs, (*lead, cfg.out_hidden_size), dtype, "zeros")

    def apply(self, x: jax.Array, merge_unit: int, index: int | None = None) -> jax.Array:
        """x [S, P, E] -> [S, P / merge_unit, out]; `index` picks one of stacked mergers."""
        p = {k: (v[...] if index is None else v[index]) for k, v in vars(self).items() if isinstance(v, nnx.Param)}
        s, n, e = x.shape
        if self.postshuffle:
            x = layer_norm(x.reshape(s, n // merge_unit, e * merge_unit), p["norm_scale"], p["norm_bias"], _NORM_EPS)
        else:
            x = layer_norm(x, p["norm_scale"], p["norm_bias"], _NORM_EPS).reshape(s, n // merge_unit, e * merge_unit)
        x = jax.nn.gelu(linear(x, p["fc1_kernel"], p["fc1_bias"]), approximate=False)
        return linear(x, p["fc2_kernel"], p["fc2_bias"])


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.attention = "xla"   # the kernel of every block (jaxr1.models.set_attention)
        self.patch_embed = param(rngs, (cfg.patch_dim, cfg.hidden_size), dtype)  # Conv3d as a matmul
        self.patch_bias = param(rngs, (cfg.hidden_size,), dtype, "zeros")
        self.pos_embed = param(rngs, (cfg.num_position_embeddings, cfg.hidden_size), dtype)
        self.blocks = VisionBlocks(cfg, dtype, rngs)
        self.merger = PatchMerger(cfg, dtype, rngs)
        n = len(cfg.deepstack_visual_indexes)
        self.deepstack = PatchMerger(cfg, dtype, rngs, postshuffle=True, count=n) if n else None

    def __call__(self, patches: jax.Array, rope_hw: jax.Array, frame_ids: jax.Array, pos_index: jax.Array,
                 pos_weight: jax.Array, *, remat: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """patches [S, P, patch_dim] -> merged features [S, P/4, out] and DeepStack features
        [n, S, P/4, out] (n = len(deepstack_visual_indexes), in vision-layer order), or None when n = 0."""
        cfg = self.cfg
        dtype = self.patch_embed[...].dtype
        x = linear(patches.astype(dtype), self.patch_embed[...], self.patch_bias[...])
        # Bilinear resampling of the learned grid: weights in float32, summed, then cast (as transformers).
        taps = jnp.take(self.pos_embed[...], pos_index, axis=0) * pos_weight[..., None]
        x = x + taps.sum(-2).astype(dtype)
        cos, sin = axial_rotary(cfg.head_dim, cfg.rope_theta, rope_hw)   # as Qwen2.5-VL's
        segments = frame_ids + 1   # 0 = pad patch
        act = activation(cfg.hidden_act)

        def block(x, p):
            return layer_norm_block(x, p, cos, sin, segments, cfg.num_heads, act, dtype, _BLOCK_NAMES,
                                    self.attention), None

        if remat:
            block = jax.checkpoint(block)
        stacked = stacked_params(self.blocks)
        # Scan in segments that end at the DeepStack layers, so their outputs are taken without stacking
        # every layer's activations (same body each segment).
        taken = sorted(cfg.deepstack_visual_indexes)
        deep, start = [], 0
        for stop in sorted({i + 1 for i in taken} | {cfg.depth}):
            x, _ = jax.lax.scan(block, x, {k: v[start:stop] for k, v in stacked.items()})
            if stop - 1 in taken:
                # Merger j belongs to the j-th entry of deepstack_visual_indexes (transformers' `.index`).
                deep.append(self.deepstack.apply(x, cfg.merge_unit, cfg.deepstack_visual_indexes.index(stop - 1)))
            start = stop
        merged = self.merger.apply(x, cfg.merge_unit)
        return merged, (jnp.stack(deep) if deep else None)
