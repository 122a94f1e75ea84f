"""Completion-length buckets: the training passes run on completions cut to the step's longest real one.

Under causal attention the padding after every row's end changes no logit, so the cut changes no loss or
gradient; it only stops the step from paying for `max_completion_length`. Lengths round up to 16 * 2^k and
24 * 2^k (at most 1.5x padding), so a run compiles the training passes for a handful of shapes.
"""
from __future__ import annotations

import numpy as np

MIN_BUCKET = 16


def completion_buckets(max_len: int) -> list[int]:
    sizes = {max_len}
    k = MIN_BUCKET
    while k < max_len:
        sizes.update(s for s in (k, k * 3 // 2) if s < max_len)
        k *= 2
    return sorted(sizes)


def trimmed_length(lengths: np.ndarray, max_len: int) -> int:
    """The smallest bucket that holds every completion (lengths [R], each <= max_len)."""
    longest = int(np.max(lengths)) if np.size(lengths) else 1
    return next(b for b in completion_buckets(max_len) if b >= max(longest, 1))
