"""The one door from a batch of prompts into any family's model: `ModelInputs`, the static-shape buckets of
image inputs, and `model_inputs`, which both the sampler and the update call.

Under `jit` every distinct shape is a compilation, so images go one per slot ([slots, patches per slot, ...])
with both sizes bucketed here; each family then lays its images out in those buckets (its `prepare_inputs`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxr1.models import family_of


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModelInputs:
    input_ids: jax.Array       # [B, T]
    attention_mask: jax.Array  # [B, T]
    positions: jax.Array       # [3, B, T] M-RoPE ids
    image_index: jax.Array     # [B, T] flat merged-image-token index per <|image_pad|>, -1 elsewhere
    vision: Any = None         # the family's VisionInputs (None: no images)


class PromptArrays(NamedTuple):
    """Prompts as the tokenizer and image processor give them (jaxr1.data's PromptBatch has the same fields)."""
    input_ids: np.ndarray                 # [B, T]
    attention_mask: np.ndarray            # [B, T]
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None


def next_bucket(n: int, minimum: int = 16) -> int:
    """Power-of-two bucket >= n: a handful of compiled shapes covers every size."""
    b = minimum
    while b < n:
        b *= 2
    return b


def image_slots(n_images: int) -> int:
    """Slots for a batch's images: one per image, bucketed to a power of two."""
    return next_bucket(max(n_images, 1), 1)


def slot_patches(largest: int, bound: int | None = None) -> int:
    """Patches per slot for a batch whose largest image has `largest` patches: `bound` (a fixed bucket, e.g.
    `max_patches` of the processor, so every batch shares one shape) unless an image is above it; else that
    image's power-of-two bucket."""
    return bound if bound is not None and largest <= bound else next_bucket(largest, 64)


def max_patches(image_processor) -> int | None:
    """Patches of the largest image the processor can emit (max_pixels / patch_size^2), rounded to a bucket."""
    max_pixels = getattr(image_processor, "max_pixels", None) or (getattr(image_processor, "size", None) or {}).get(
        "longest_edge")
    patch = getattr(image_processor, "patch_size", 14)
    return next_bucket(int(max_pixels) // (patch * patch), 64) if max_pixels else None


def model_inputs(cfg, batch, *, patches_per_slot: int | None = None) -> tuple[ModelInputs, np.ndarray]:
    """Static-shape inputs of `batch` (a PromptBatch or PromptArrays, left padded) for the model of config `cfg`,
    and each row's rope delta. The token columns are kept as they are; image slots and patches per slot are
    bucketed here (`patches_per_slot`: the fixed bound, see `slot_patches`)."""
    grids = None if batch.image_grid_thw is None else np.asarray(batch.image_grid_thw)
    slots = patches = None
    if batch.pixel_values is not None and grids is not None and len(grids):
        slots, patches = image_slots(len(grids)), slot_patches(int(grids.prod(-1).max()), patches_per_slot)
    return family_of(cfg).prepare_inputs(cfg, batch.input_ids, batch.attention_mask, batch.pixel_values, grids,
                                         num_image_slots=slots, patches_per_slot=patches)
