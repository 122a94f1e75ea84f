"""Qwen2.5-VL vision tower: patch embedding, 2D rotary, window/full attention blocks, patch merger.

Runs on the slot layout of `vision_index.build_vision_layout`: [slots, patches, ...] with window and frame
segment ids, so every shape is static and attention stays inside its image, frame and window.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxr1.models.lora import stacked_weights
from jaxr1.models.qwen2_5_vl.config import VisionConfig
from jaxr1.models.qwen2_5_vl.params_init import param
from jaxr1.ops.attention import attention
from jaxr1.ops.layers import activation, apply_rope, linear, rms_norm

_NORM_EPS = 1e-6  # transformers hard-codes eps=1e-6 in the vision blocks and merger


class VisionBlocks(nnx.Module):
    """`depth` blocks with weights stacked on axis 0."""

    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs | None):
        L, E, I = cfg.depth, cfg.hidden_size, cfg.intermediate_size
        self.norm1 = param(rngs, (L, E), dtype, "ones")
        self.norm2 = param(rngs, (L, E), dtype, "ones")
        self.qkv_kernel = param(rngs, (L, E, 3 * E), dtype)
        self.qkv_bias = param(rngs, (L, 3 * E), dtype, "zeros")
        self.proj_kernel = param(rngs, (L, E, E), dtype)
        self.proj_bias = param(rngs, (L, E), dtype, "zeros")
        self.gate_kernel = param(rngs, (L, E, I), dtype)
        self.gate_bias = param(rngs, (L, I), dtype, "zeros")
        self.up_kernel = param(rngs, (L, E, I), dtype)
        self.up_bias = param(rngs, (L, I), dtype, "zeros")
        self.down_kernel = param(rngs, (L, I, E), dtype)
        self.down_bias = param(rngs, (L, E), dtype, "zeros")


class PatchMerger(nnx.Module):
    def __init__(self, cfg: VisionConfig, dtype, rngs: nnx.Rngs | None):
        E, M = cfg.hidden_size, cfg.hidden_size * cfg.merge_unit
        self.ln_q = param(rngs, (E,), dtype, "ones")
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

    def rotary(self, rope_hw: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        return axial_rotary(self.cfg.head_dim, self.cfg.rope_theta, rope_hw)

    def __call__(self, patches: jax.Array, rope_hw: jax.Array, window_ids: jax.Array, frame_ids: jax.Array,
                 restore: jax.Array, *, remat: bool = False, window_slots: jax.Array | None = None) -> jax.Array:
        """patches [S, P, patch_dim] (window order) -> merged features [S, P/4, out_hidden] (processor order).
        window_slots [S, W, window patches] (vision_index.window_blocks): window layers attend within those
        blocks; without it they attend over the slot under the window segment mask (the same math, ~P/window
        times the attention cost)."""
        cfg = self.cfg
        dtype = self.patch_embed[...].dtype
        x = patches.astype(dtype) @ self.patch_embed[...]
        cos, sin = self.rotary(rope_hw, dtype)
        # Segment ids (0 = pad patch) select what each layer attends within a slot: its window or its frame.
        window_seg, full_seg = window_ids + 1, frame_ids + 1
        act = activation(cfg.hidden_act)
        heads = cfg.num_heads

        def make_block(full: bool):
            def attend(h, p):
                if full or window_slots is None:
                    return vision_attention(h, p, cos, sin, full_seg if full else window_seg, heads, dtype,
                                            self.attention)
                return vision_attention(h, p, cos, sin, None, heads, dtype, self.attention, blocks=window_slots)

            def block(x, p):
                x = x + attend(rms_norm(x, p["norm1"], _NORM_EPS), p)
                h = rms_norm(x, p["norm2"], _NORM_EPS)
                g = act(linear(h, p["gate_kernel"], p["gate_bias"])) * linear(h, p["up_kernel"], p["up_bias"])
                return x + linear(g, p["down_kernel"], p["down_bias"]), None
            return jax.checkpoint(block) if remat else block

        full = {i for i in cfg.fullatt_block_indexes if i < cfg.depth}
        x = scan_layer_runs(x, stacked_params(self.blocks), [i in full for i in range(cfg.depth)], make_block)
        return merge_patches(self.merger, rms_norm(x, self.merger.ln_q[...], _NORM_EPS), restore, cfg.merge_unit)


def scan_layer_runs(x, stacked: dict, kinds: list[bool], make_block):
    """Run layers whose kind (a static bool per layer) picks their body: each run of one kind is a scan, and
    a pattern that repeats (Qwen2.5-VL: 7 window layers + 1 full, 4 times) is a scan over the repeats of
    a scan per run, so the program holds one body per kind, not one per run."""
    runs = []   # (kind, start, stop)
    for i, kind in enumerate(kinds):
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1], i + 1)
        else:
            runs.append((kind, i, i + 1))
    unit = next((u for u in range(1, len(runs) // 2 + 1) if len(runs) % u == 0 and all(
        (runs[i][0], runs[i][2] - runs[i][1]) == (runs[i % u][0], runs[i % u][2] - runs[i % u][1])
        for i in range(len(runs)))), None)
    layers = lambda params, start, stop: jax.tree.map(lambda a: a[start:stop], params)   # LoraKernels too
    if unit is None:
        for kind, start, stop in runs:
            x, _ = jax.lax.scan(make_block(kind), x, layers(stacked, start, stop))
        return x
    period, repeats = runs[unit][1], len(kinds) // runs[unit][1]
    bodies = [(make_block(kind), start, stop) for kind, start, stop in runs[:unit]]

    def repeat(x, params):
        for body, start, stop in bodies:
            x, _ = jax.lax.scan(body, x, layers(params, start, stop))
        return x, None
    grouped = jax.tree.map(lambda a: a.reshape(repeats, period, *a.shape[1:]), stacked)
    x, _ = jax.lax.scan(repeat, x, grouped)
    return x


# ---- Shared with the Qwen2-VL and Qwen3-VL vision towers ----
# The stacked block weights `jax.lax.scan` runs over (adapted kernels as LoraKernels).
stacked_params = stacked_weights


def vision_attention(h: jax.Array, p: dict[str, jax.Array], cos: jax.Array, sin: jax.Array,
                     segments: jax.Array | None, heads: int, dtype, implementation: str = "xla", *,
                     blocks: jax.Array | None = None) -> jax.Array:
    """A vision block's self-attention on normed h [S, P, E]: fused qkv (`qkv_kernel`/`qkv_bias`), the axial
    rotary on q and k, attention within `segments` [S, P] (equal ids attend, 0 = pad patch) or, with
    `blocks` [S, W, n] (patch indices, -1 = empty), within each block (a window) only, output projection
    (`proj_kernel`/`proj_bias`). cudnn serves the blocks (each block row is one run of patches from slot 0,
    what its wrapper takes) but not `segments`: a slot may hold several frames (several runs), so those
    layers run xla."""
    s, n, e = h.shape
    hd = e // heads
    qkv = linear(h, p["qkv_kernel"], p["qkv_bias"]).reshape(s, n, 3, heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # transformers applies the vision rotary in float32 and casts back.
    q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dtype)
    k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dtype)
    if blocks is None:
        implementation = "xla" if implementation == "cudnn" else implementation
        o = attention(q, k, v, q_segment_ids=segments, kv_segment_ids=segments, implementation=implementation)
    else:
        o = block_attention(q, k, v, blocks, implementation)
    o = o.reshape(s, n, heads * hd)
    return linear(o, p["proj_kernel"], p["proj_bias"])


def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, blocks: jax.Array, implementation: str) -> jax.Array:
    """Attention of q/k/v [S, P, H, hd] within blocks [S, W, n] of patch indices (-1 = empty): each block is
    gathered into its own row of n, attends there, and its outputs go back to their patches (a patch in no
    block, padding, takes block slot 0's output; callers ignore padding)."""
    s, p_len, heads, hd = q.shape
    _, w, n = blocks.shape
    flat = blocks.reshape(s, w * n)
    index = jnp.maximum(flat, 0)[:, :, None, None]
    take = lambda x: jnp.take_along_axis(x, index, axis=1).reshape(s * w, n, heads, hd)
    seg = (flat >= 0).astype(jnp.int32).reshape(s * w, n)
    o = attention(take(q), take(k), take(v), q_segment_ids=seg, kv_segment_ids=seg, implementation=implementation)
    # Where each patch sits in the block layout (an integer scatter: no gradient flows through it).
    where = jnp.zeros((s, p_len), jnp.int32).at[jnp.arange(s)[:, None], jnp.where(flat >= 0, flat, p_len)].set(
        jnp.broadcast_to(jnp.arange(w * n, dtype=jnp.int32), (s, w * n)), mode="drop")
    return jnp.take_along_axis(o.reshape(s, w * n, heads, hd), where[:, :, None, None], axis=1)


def axial_rotary(head_dim: int, theta: float, rope_hw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Axial 2D rotary: a quarter of head_dim of frequencies for rows, a quarter for columns, doubled."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
    freqs = rope_hw[..., None].astype(jnp.float32) * inv_freq          # [S, P, 2, hd/4]
    freqs = freqs.reshape(*freqs.shape[:-2], -1)                        # [S, P, hd/2] (rows then cols)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def merge_patches(merger: nnx.Module, x: jax.Array, restore: jax.Array, merge_unit: int) -> jax.Array:
    """Normed patches [S, P, E] -> merged tokens [S, P/merge_unit, out] (each merge_unit consecutive patches
    concatenated, fc1 -> exact GELU -> fc2), then gathered back to processor order by `restore`."""
    s, n, e = x.shape
    x = x.reshape(s, n // merge_unit, e * merge_unit)
    x = jax.nn.gelu(linear(x, merger.fc1_kernel[...], merger.fc1_bias[...]), approximate=False)
    x = linear(x, merger.fc2_kernel[...], merger.fc2_bias[...])
    return jnp.take_along_axis(x, restore[..., None], axis=1)
