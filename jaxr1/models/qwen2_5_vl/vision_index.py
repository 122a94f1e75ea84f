"""Host-side layout of images for the vision tower under static shapes.

The image processor emits all patches of all images concatenated ([N, C*T*P*P]), each image's patches in
merge-block order (every 4 consecutive patches form one merged token). Under `jit` we need fixed shapes, so
images go one per *slot* in a [num_slots, patches_per_slot, ...] array, padded. Inside a slot the patches are
reordered window by window (transformers' `get_vision_window_index`); window and frame ids become attention
segment ids, so attention never crosses images (slots), frames or windows. Pad patches get id -1 and only
see each other. `restore` maps each merged token back from window order to the processor's order.
`window_slots` puts the windows side by side as blocks ([S, W, window patches], -1 = empty) so the tower's
window layers attend within blocks (cost ~ P x window) instead of over the whole slot under a mask (~ P^2).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxr1.models.inputs import image_slots, next_bucket, slot_patches


@dataclasses.dataclass
class VisionLayout:
    patches: np.ndarray      # [S, P, patch_dim] float32, window order, zero padded
    rope_hw: np.ndarray      # [S, P, 2] int32, (row, col) of each patch in its image
    window_ids: np.ndarray   # [S, P] int32, -1 on padding
    frame_ids: np.ndarray    # [S, P] int32, -1 on padding (full-attention segments)
    restore: np.ndarray      # [S, P // merge_unit] int32, window order -> processor order
    num_tokens: np.ndarray   # [S] int32, merged tokens per slot (0 for empty slots)
    window_slots: np.ndarray | None = None   # [S, W, window patches] int32 patch index (window order), -1 empty


def image_window_order(grid_thw, *, spatial_merge_size: int, window_size: int | None, patch_size: int):
    """Merged-token order by window for one image, and the window id of each token in that order.
    window_size=None (no window attention, as in Qwen2-VL): one window per frame, processor order kept."""
    t, h, w = (int(x) for x in grid_thw)
    lh, lw = h // spatial_merge_size, w // spatial_merge_size
    # window side, in merged tokens
    win = max(lh, lw, 1) if window_size is None else window_size // spatial_merge_size // patch_size
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    nwh, nww = -(-lh // win), -(-lw // win)
    order, wid = [], []
    for f in range(t):
        for wy in range(nwh):
            for wx in range(nww):
                block = index[f, wy * win:(wy + 1) * win, wx * win:(wx + 1) * win].reshape(-1)
                order.append(block)
                wid.append(np.full(block.shape, (f * nwh + wy) * nww + wx))
    return np.concatenate(order), np.concatenate(wid)


def image_patch_positions(grid_thw, spatial_merge_size: int) -> np.ndarray:
    """(row, col) of every patch in processor order (merge-block major), as transformers' vision position ids."""
    t, h, w = (int(x) for x in grid_thw)
    m = spatial_merge_size
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    hpos = hpos.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hpos, wpos], -1), (t, 1))


def build_vision_layout(pixel_values: np.ndarray, image_grid_thw: np.ndarray, *, spatial_merge_size: int,
                        window_size: int | None, patch_size: int, num_slots: int | None = None,
                        patches_per_slot: int | None = None) -> VisionLayout:
    grids = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    pixel_values = np.asarray(pixel_values)
    unit = spatial_merge_size**2
    counts = grids.prod(-1)
    if counts.sum() != len(pixel_values):
        raise ValueError(f"pixel_values has {len(pixel_values)} patches but image_grid_thw describes {counts.sum()}")
    n_slots = num_slots or image_slots(len(grids))
    p_slot = patches_per_slot or slot_patches(int(counts.max()) if len(counts) else unit)
    if len(grids) > n_slots or (len(counts) and counts.max() > p_slot):
        raise ValueError(f"{len(grids)} images of up to {counts.max()} patches do not fit {n_slots} slots x {p_slot}")
    patches = np.zeros((n_slots, p_slot, pixel_values.shape[-1]), np.float32)
    rope_hw = np.zeros((n_slots, p_slot, 2), np.int32)
    window_ids = np.full((n_slots, p_slot), -1, np.int32)
    frame_ids = np.full((n_slots, p_slot), -1, np.int32)
    restore = np.zeros((n_slots, p_slot // unit), np.int32)
    num_tokens = np.zeros((n_slots,), np.int32)
    start = 0
    for s, grid in enumerate(grids):
        n = int(counts[s])
        order, wid = image_window_order(grid, spatial_merge_size=spatial_merge_size, window_size=window_size,
                                        patch_size=patch_size)
        patch_order = (order[:, None] * unit + np.arange(unit)).reshape(-1)   # token order -> patch order
        patches[s, :n] = pixel_values[start:start + n][patch_order]
        rope_hw[s, :n] = image_patch_positions(grid, spatial_merge_size)[patch_order]
        window_ids[s, :n] = np.repeat(wid, unit)
        frame_ids[s, :n] = np.repeat(order // (n // unit // int(grid[0])), unit)
        restore[s, :n // unit] = np.argsort(order)
        num_tokens[s] = n // unit
        start += n
    slots = None if window_size is None else window_blocks(window_ids, (window_size // patch_size) ** 2)
    return VisionLayout(patches, rope_hw, window_ids, frame_ids, restore, num_tokens, slots)


def window_blocks(window_ids: np.ndarray, window_patches: int) -> np.ndarray:
    """[S, W, window_patches]: the patch indices of each slot's windows (contiguous runs of window_ids in window
    order), one window per block, -1 past a window's end and in unused blocks. W is a power of two from
    P / window_patches up (images whose edge windows are partial need more blocks than that), so batches of
    one patch bucket share one or two shapes."""
    n_slots, p_slot = window_ids.shape
    runs = []
    for ids in window_ids:
        real = ids[ids >= 0]
        _, starts, counts = np.unique(real, return_index=True, return_counts=True)
        order = np.argsort(starts)
        runs.append((starts[order], counts[order]))
    if any((c > window_patches).any() for _, c in runs):
        raise ValueError(f"a window holds more than {window_patches} patches")
    most = max([len(s) for s, _ in runs] + [1])
    blocks = next_bucket(most, max(1, p_slot // window_patches))
    out = np.full((n_slots, blocks, window_patches), -1, np.int32)
    for s, (starts, counts) in enumerate(runs):
        for w, (a, c) in enumerate(zip(starts, counts)):
            out[s, w, :c] = np.arange(a, a + c)
    return out


def image_token_index(input_ids: np.ndarray, image_token_id: int, num_tokens: np.ndarray,
                      tokens_per_slot: int) -> np.ndarray:
    """For each text position holding <|image_pad|>, the flat index of its merged image token; -1 elsewhere.

    Image tokens are matched to images in row-major order, as transformers' masked_scatter does.
    """
    input_ids = np.asarray(input_ids)
    is_image = input_ids == image_token_id
    total = int(is_image.sum())
    flat = np.concatenate([s * tokens_per_slot + np.arange(n) for s, n in enumerate(num_tokens)] or [np.zeros(0)])
    if total != len(flat):
        raise ValueError(f"input_ids has {total} <|image_pad|> tokens but the images give {len(flat)} features")
    index = np.full(input_ids.shape, -1, np.int32)
    index[is_image] = flat.astype(np.int32)
    return index
