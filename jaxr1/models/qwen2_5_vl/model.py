"""Qwen2.5-VL for conditional generation: vision tower + text decoder, and the host-side input preparation.

`Qwen2_5_VL.forward(inputs)` is pure and traceable (static shapes); `prepare_inputs` turns what the HF
tokenizer and image processor emit into those static-shape `ModelInputs` on the host; `model(...)` does both.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxr1.models.inputs import ModelInputs
from jaxr1.models.qwen2_5_vl.config import ModelConfig
from jaxr1.models.qwen2_5_vl.rope_index import get_rope_index
from jaxr1.models.qwen2_5_vl.text import TextDecoder
from jaxr1.models.qwen2_5_vl.vision import VisionTower
from jaxr1.models.qwen2_5_vl.vision_index import build_vision_layout, image_token_index
from jaxr1.models.vlm import VisionLanguageModel


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class VisionInputs:
    patches: jax.Array      # [S, P, patch_dim]
    rope_hw: jax.Array      # [S, P, 2]
    window_ids: jax.Array   # [S, P]
    frame_ids: jax.Array    # [S, P]
    restore: jax.Array      # [S, P / merge_unit]
    window_slots: jax.Array | None = None   # [S, W, window patches]: windows as blocks (None: no window layers)


def prepare_inputs(cfg: ModelConfig, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                   num_image_slots: int | None = None, patches_per_slot: int | None = None
                   ) -> tuple[ModelInputs, np.ndarray]:
    """Host (numpy) preparation. Returns the inputs and each row's rope delta (for decoding)."""
    def vision_inputs(pixel_values, image_grid_thw):
        v = cfg.vision
        layout = build_vision_layout(pixel_values, image_grid_thw, spatial_merge_size=v.spatial_merge_size,
                                     window_size=v.window_size, patch_size=v.patch_size,
                                     num_slots=num_image_slots, patches_per_slot=patches_per_slot)
        inputs = VisionInputs(layout.patches, layout.rope_hw, layout.window_ids, layout.frame_ids, layout.restore,
                              layout.window_slots)
        return inputs, layout.num_tokens, layout.restore.shape[1]

    return prepare_with_vision(cfg, input_ids, attention_mask, pixel_values, image_grid_thw, vision_inputs)


def prepare_with_vision(cfg, input_ids, attention_mask, pixel_values, image_grid_thw, vision_inputs
                        ) -> tuple[ModelInputs, np.ndarray]:
    """`prepare_inputs` for any family: M-RoPE positions (transformers' get_rope_index for still images) and
    the image index; `vision_inputs(pixel_values, image_grid_thw)` gives the family's VisionInputs, the merged
    tokens of each slot [S] and the merged tokens a slot holds."""
    input_ids = np.asarray(input_ids, np.int32)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    has_images = pixel_values is not None and image_grid_thw is not None and len(image_grid_thw) > 0
    positions, deltas = get_rope_index(input_ids, attention_mask, image_grid_thw if has_images else None,
                                       image_token_id=cfg.image_token_id,
                                       spatial_merge_size=cfg.vision.spatial_merge_size)
    vision = None
    if has_images:
        vision, num_tokens, tokens_per_slot = vision_inputs(pixel_values, image_grid_thw)
        image_index = image_token_index(input_ids, cfg.image_token_id, num_tokens, tokens_per_slot)
    else:
        if (input_ids == cfg.image_token_id).any():
            raise ValueError("input_ids contain <|image_pad|> tokens but no pixel_values/image_grid_thw were given")
        image_index = np.full(input_ids.shape, -1, np.int32)
    return ModelInputs(input_ids, attention_mask, positions, image_index, vision), deltas


class Qwen2_5_VL(VisionLanguageModel):
    vision_tower = VisionTower
    text_decoder = TextDecoder
    prepare_inputs = staticmethod(prepare_inputs)

    def encode_images(self, vision: VisionInputs, *, remat: bool = False) -> jax.Array:
        """[S, P, patch_dim] -> [S * P / merge_unit, D] flat merged image features."""
        feats = self.visual(vision.patches, vision.rope_hw, vision.window_ids, vision.frame_ids, vision.restore,
                            remat=remat, window_slots=vision.window_slots)
        return feats.reshape(-1, feats.shape[-1])
