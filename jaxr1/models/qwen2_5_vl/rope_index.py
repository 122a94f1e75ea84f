"""M-RoPE position ids, computed on the host with numpy exactly as transformers' `get_rope_index` does.

Text tokens advance all three channels (temporal, height, width) together; the tokens of an image take
(t, row, col) offsets from the position where the image starts, and the text after an image resumes at
start + max(grid_h, grid_w) / merge. Padding (attention_mask == 0) gets position 0 and is skipped, so a
left-padded row has the same positions as the unpadded row. `rope_delta` = last position + 1 - valid
length: decoding continues at (text index + rope_delta) on all three channels.
"""
from __future__ import annotations

import numpy as np


def get_rope_index(input_ids: np.ndarray, attention_mask: np.ndarray | None, image_grid_thw: np.ndarray | None,
                   *, image_token_id: int, spatial_merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns position_ids [3, B, T] int32 and rope_deltas [B] int32. Images are consumed in row-major order."""
    input_ids = np.asarray(input_ids)
    b, t = input_ids.shape
    mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    grids = iter(np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw))
    positions = np.zeros((3, b, t), np.int32)
    deltas = np.zeros((b,), np.int32)
    for row in range(b):
        ids = input_ids[row][mask[row]]
        is_image = ids == image_token_id
        pos = np.zeros((3, len(ids)), np.int64)
        cur, i = 0, 0
        while i < len(ids):
            if not is_image[i]:
                j = i
                while j < len(ids) and not is_image[j]:
                    j += 1
                pos[:, i:j] = cur + np.arange(j - i)
                cur += j - i
                i = j
                continue
            try:
                gt, gh, gw = (int(x) for x in next(grids))
            except StopIteration:
                raise ValueError(f"row {row}: more image token runs than rows in image_grid_thw") from None
            lh, lw = gh // spatial_merge_size, gw // spatial_merge_size
            n = gt * lh * lw
            if i + n > len(ids) or not is_image[i:i + n].all():
                raise ValueError(f"row {row}: image run at {i} is shorter than grid {gt}x{gh}x{gw} needs ({n} tokens)")
            tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(lh), np.arange(lw), indexing="ij")
            pos[0, i:i + n] = tt.reshape(-1) + cur
            pos[1, i:i + n] = hh.reshape(-1) + cur
            pos[2, i:i + n] = ww.reshape(-1) + cur
            cur += max(lh, lw)
            i += n
        positions[:, row, mask[row]] = pos
        deltas[row] = (pos.max() + 1 - len(ids)) if len(ids) else 0
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw has more rows than image token runs in input_ids")
    return positions, deltas
