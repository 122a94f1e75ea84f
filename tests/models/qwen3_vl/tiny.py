"""Tiny random transformers Qwen3-VL models and synthetic inputs for parity tests (needs torch).

Token ids and prompts come from tests/hf_tiny.py (shared with the Qwen2.5-VL tests); pixel values here
have Qwen3-VL's patch size (16).
"""
from __future__ import annotations

from tests import hf_tiny
from tests.hf_tiny import IMAGE_TOKEN_ID, VISION_END_ID, VISION_START_ID

PATCH = 16


def tiny_hf_config(*, tie: bool = False, vocab: int = 700, depth: int = 4, layers: int = 3,
                   deepstack=(0, 2), num_position_embeddings: int = 36):
    from transformers import Qwen3VLConfig
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 4, 4],
                                          "mrope_interleaved": True},
                         max_position_embeddings=4096),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=PATCH,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64, in_channels=3,
                           num_position_embeddings=num_position_embeddings,
                           deepstack_visual_indexes=list(deepstack)),
        image_token_id=IMAGE_TOKEN_ID, video_token_id=IMAGE_TOKEN_ID + 1, vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID, tie_word_embeddings=tie)


def make_hf_model(cfg, seed: int = 0):
    """tests/hf_tiny.py's builder (every 1-D weight perturbed, so parity sees norms and biases)."""
    from transformers import Qwen3VLForConditionalGeneration
    return hf_tiny.make_hf_model(cfg, seed, model_cls=Qwen3VLForConditionalGeneration)


def random_image_inputs(grids, seed: int = 0):
    """pixel_values [N, 3*2*16*16] and image_grid_thw as the image processor emits them."""
    return hf_tiny.random_image_inputs(grids, seed, patch=PATCH)
