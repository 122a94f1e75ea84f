"""Host-side prompt preparation under static shapes: left-align, bucket the prompt length, lay out images.

Every prompt is moved to the right end of a row of `bucket_prompt_length(longest)` slots (left padding), so
the last slot holds each prompt's last token. Image slots and patches per slot are bucketed where the update's
are (`jaxr1.models.inputs.model_inputs`). Batches whose sizes fall in the same buckets reuse compiled programs.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxr1.models.inputs import ModelInputs, PromptArrays, model_inputs, next_bucket


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplerPrompts:
    """Prompts as the sampler takes them: bucketed model inputs plus what decode needs to continue each row.
    (jaxr1.data's PromptBatch is the host-side batch from the data pipeline; train.py turns one into this.)"""
    inputs: ModelInputs          # [B, Tp] left padded, with M-RoPE positions and the image slot layout
    prompt_lengths: np.ndarray   # [B] int32 valid prompt tokens
    rope_deltas: np.ndarray      # [B] int32: continuation token j sits at text position length + delta + j


def bucket_prompt_length(n: int) -> int:
    """Powers of two up to 256, then multiples of 128: few shapes, at most 1/3 padding past 256."""
    return next_bucket(n, 16) if n <= 256 else -(-n // 128) * 128


def bucket_gen_length(n: int) -> int:
    """Generation buffer: a power of two >= max_new_tokens (min 16); max_new_tokens itself is traced."""
    return next_bucket(n, 16)


def prepare_prompts(cfg, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                    pad_token_id: int = 0, prompt_length: int | None = None) -> SamplerPrompts:
    """From what the tokenizer (left or right padded) and image processor produce, as numpy arrays. `cfg` is a
    model's `.config` (or the model itself)."""
    cfg = getattr(cfg, "config", cfg)
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    lengths = mask.astype(bool).sum(-1).astype(np.int32)
    if (lengths == 0).any():
        raise ValueError(f"rows {np.flatnonzero(lengths == 0).tolist()} have no prompt tokens")
    tp = prompt_length or bucket_prompt_length(int(lengths.max()))
    if tp < lengths.max():
        raise ValueError(f"prompt_length={tp} < longest prompt ({lengths.max()} tokens)")
    aligned = np.full((len(ids), tp), pad_token_id, np.int32)
    aligned_mask = np.zeros((len(ids), tp), np.int32)
    for i, (row, m) in enumerate(zip(ids, mask.astype(bool))):
        aligned[i, tp - lengths[i]:] = row[m]
        aligned_mask[i, tp - lengths[i]:] = 1
    inputs, deltas = model_inputs(cfg, PromptArrays(aligned, aligned_mask, pixel_values, image_grid_thw))
    return SamplerPrompts(inputs, lengths, np.asarray(deltas, np.int32))
