"""Bounding boxes for grounding (REC) rewards: parse a predicted box, map frames, IoU.

Qwen2.5-VL answers in absolute pixels of the image it saw, which smart_resize scaled; gold
boxes are in original-image pixels. The frame the prompt asked for decides the mapping.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

_NUM = r"[-+]?\d+(?:\.\d+)?"
_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_PAIRS_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
FRAMES = ("original", "resized", "normalized_1000")


def parse_bbox(text: str | None) -> list[float] | None:
    """The first [x1, y1, x2, y2] (or '(x1,y1),(x2,y2)') in text, as in VLM-R1's REC reward."""
    if not text:
        return None
    m = _BOX_RE.search(text[:20_000]) or _PAIRS_RE.search(text[:20_000])
    if m is None:
        return None
    box = [float(v) for v in m.groups()]
    return box if all(math.isfinite(v) for v in box) else None


def to_original(
    box: Sequence[float],
    frame: str,
    image_size: Sequence[int] | None,
    resized_size: Sequence[int] | None,
) -> list[float]:
    """Map a box from `frame` into original-image pixels (sizes are [height, width])."""
    if frame not in FRAMES:
        raise ValueError(f"bbox_frame must be one of {FRAMES}, got {frame!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if frame == "original":
        return [x1, y1, x2, y2]
    if image_size is None:
        raise ValueError(f"bbox_frame={frame!r} needs the example's image_size")
    h, w = float(image_size[0]), float(image_size[1])
    if frame == "normalized_1000":
        sx, sy = w / 1000.0, h / 1000.0
    else:
        if resized_size is None:
            raise ValueError("bbox_frame='resized' needs the example's resized_size")
        sx, sy = w / float(resized_size[1]), h / float(resized_size[0])
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes; 0 for empty boxes."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
        return 0.0
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def example_frame(example: dict) -> str:
    """The frame a prediction is in: as stated, else Qwen2.5-VL's resized frame if known."""
    frame = example.get("bbox_frame")
    if frame:
        return frame
    return "resized" if example.get("resized_size") is not None else "original"
