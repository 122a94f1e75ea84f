"""Qwen3-VL (dense) for conditional generation: vision tower (+ DeepStack) + Qwen3 text decoder, and the
host-side input preparation.

Same surface as `jaxr1.models.qwen2_5_vl.Qwen2_5_VL` (it shares the base `jaxr1.models.vlm.VisionLanguageModel`,
`jaxr1.models.inputs.ModelInputs` and Qwen2.5-VL's input preparation): `forward(inputs)` is pure and
traceable, `prepare_inputs` builds the static-shape inputs on the host, `model(...)` does both.
Difference: image features are a pair (merged features [N, D], DeepStack features [n, N, D]); the second
must reach the text decoder (`deepstack_inputs`), not only the embeddings.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxr1.models.inputs import ModelInputs
from jaxr1.models.qwen2_5_vl.model import prepare_with_vision
from jaxr1.models.qwen3_vl.config import ModelConfig
from jaxr1.models.qwen3_vl.text import TextDecoder
from jaxr1.models.qwen3_vl.vision import VisionTower
from jaxr1.models.qwen3_vl.vision_index import build_layout
from jaxr1.models.vlm import VisionLanguageModel

ImageFeatures = tuple  # (features [N, D], deepstack [n, N, D] or None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class VisionInputs:
    patches: jax.Array      # [S, P, patch_dim]
    rope_hw: jax.Array      # [S, P, 2]
    frame_ids: jax.Array    # [S, P]
    pos_index: jax.Array    # [S, P, 4]
    pos_weight: jax.Array   # [S, P, 4]


def prepare_inputs(cfg: ModelConfig, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                   num_image_slots: int | None = None, patches_per_slot: int | None = None
                   ) -> tuple[ModelInputs, np.ndarray]:
    """Host (numpy) preparation. Returns the inputs and each row's rope delta (for decoding).

    For still images Qwen3-VL's get_rope_index gives the same positions as Qwen2.5-VL's (t = 0, rows and
    columns offset from the image start, text resumes at start + max(h, w) / merge), so that is reused.
    Video is not supported: Qwen3-VL splits a video into one-frame grids separated by timestamp text."""
    input_ids = np.asarray(input_ids, np.int32)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if (input_ids[attention_mask.astype(bool)] == cfg.video_token_id).any():
        raise NotImplementedError("Qwen3-VL video inputs (<|video_pad|>) are not supported yet")

    def vision_inputs(pixel_values, image_grid_thw):
        layout = build_layout(pixel_values, image_grid_thw, cfg.vision, num_slots=num_image_slots,
                              patches_per_slot=patches_per_slot)
        inputs = VisionInputs(layout.patches, layout.rope_hw, layout.frame_ids, layout.pos_index, layout.pos_weight)
        return inputs, layout.num_tokens, layout.patches.shape[1] // cfg.vision.merge_unit

    return prepare_with_vision(cfg, input_ids, attention_mask, pixel_values, image_grid_thw, vision_inputs)


class Qwen3VL(VisionLanguageModel):
    vision_tower = VisionTower
    text_decoder = TextDecoder
    prepare_inputs = staticmethod(prepare_inputs)

    def encode_images(self, vision: VisionInputs, *, remat: bool = False) -> ImageFeatures:
        """-> (flat merged features [S * P / merge_unit, D], DeepStack features [n, S * P / merge_unit, D])."""
        feats, deep = self.visual(vision.patches, vision.rope_hw, vision.frame_ids, vision.pos_index,
                                  vision.pos_weight, remat=remat)
        d = feats.shape[-1]
        return feats.reshape(-1, d), (None if deep is None else deep.reshape(deep.shape[0], -1, d))

    @staticmethod
    def merged_features(image_features: ImageFeatures) -> jax.Array:
        return image_features[0]

    @staticmethod
    def deepstack_inputs(inputs: ModelInputs, image_features: ImageFeatures | None):
        """The text decoder's `deepstack=` argument: (image index [B, T], features [n, N, D]), or None."""
        if image_features is None or image_features[1] is None:
            return None
        return inputs.image_index, image_features[1]

    def hidden_states(self, inputs: ModelInputs, *, remat: bool = False, collect_hidden: bool = False):
        feats = None if inputs.vision is None else self.encode_images(inputs.vision, remat=remat)
        out = self.language_model(self.embed(inputs, feats), inputs.positions, inputs.attention_mask, remat=remat,
                                  collect_hidden=collect_hidden, deepstack=self.deepstack_inputs(inputs, feats))
        return out if collect_hidden else out[0]
