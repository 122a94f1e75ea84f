"""Host-side image layout for the Qwen3-VL vision tower under static shapes.

Reuses Qwen2.5-VL's slot layout (`jaxr1.models.qwen2_5_vl.vision_index.build_vision_layout`): one image per
slot, padded, frame ids as attention segments. Qwen3-VL has no window attention (every block attends over
the whole frame), so the layout is built with window_size=None (one window per frame): the processor's order
is kept and `restore` is the identity. Adds the learned position embedding's bilinear taps.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxr1.models.qwen2_5_vl.vision_index import build_vision_layout, image_patch_positions
from jaxr1.models.qwen3_vl.config import VisionConfig


@dataclasses.dataclass
class Qwen3VisionLayout:
    patches: np.ndarray      # [S, P, patch_dim] float32, processor order, zero padded
    rope_hw: np.ndarray      # [S, P, 2] int32 (row, col) of each patch
    frame_ids: np.ndarray    # [S, P] int32 attention segments, -1 on padding
    pos_index: np.ndarray    # [S, P, 4] int32 taps into the pos_embed table
    pos_weight: np.ndarray   # [S, P, 4] float32 bilinear weights (0 on padding)
    num_tokens: np.ndarray   # [S] int32 merged tokens per slot


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """transformers' `_interpolation_axis_taps_weights` for bilinear, align_corners=True, in the same float32
    operations (so the weights are bit-identical): src = index * (side-1) / max(size-1, 1), taps floor, floor+1
    clamped to the table, weights max(1 - |src - tap_unclamped|, 0)."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2, dtype=np.float32)
    taps = np.clip(floor.astype(np.int64)[:, None] + np.arange(2), 0, side - 1)
    weights = np.maximum(np.float32(1) - np.abs(src[:, None] - floor[:, None] - offsets), np.float32(0))
    return taps, weights.astype(np.float32)


def pos_embed_taps(grid_thw, cfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per patch (processor order: merge-block major, repeated per frame) the 4 table rows and weights that
    resample the square learned position grid to this image's (h, w) grid (F.interpolate bilinear,
    align_corners=True), i.e. transformers' `get_vision_interpolation_indices_and_weights`
    (formerly `fast_pos_embed_interpolate`)."""
    _, h, w = (int(x) for x in grid_thw)
    side = cfg.grid_side
    rc = image_patch_positions(grid_thw, cfg.spatial_merge_size)
    h_taps, h_w = _axis_taps(rc[:, 0], h, side)
    w_taps, w_w = _axis_taps(rc[:, 1], w, side)
    index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    return index.astype(np.int32), weight


def build_layout(pixel_values, image_grid_thw, cfg: VisionConfig, *, num_slots: int | None = None,
                 patches_per_slot: int | None = None) -> Qwen3VisionLayout:
    grids = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    base = build_vision_layout(pixel_values, grids, spatial_merge_size=cfg.spatial_merge_size, window_size=None,
                               patch_size=cfg.patch_size, num_slots=num_slots, patches_per_slot=patches_per_slot)
    s, p = base.frame_ids.shape
    pos_index = np.zeros((s, p, 4), np.int32)
    pos_weight = np.zeros((s, p, 4), np.float32)
    for i, grid in enumerate(grids):
        index, weight = pos_embed_taps(grid, cfg)
        pos_index[i, :len(index)] = index
        pos_weight[i, :len(index)] = weight
    return Qwen3VisionLayout(base.patches, base.rope_hw, base.frame_ids, pos_index, pos_weight, base.num_tokens)
