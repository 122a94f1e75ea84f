"""Tiny random transformers Qwen2-VL configs (same text sizes and token ids as tests.hf_tiny's Qwen2.5-VL)."""
from __future__ import annotations

from tests.hf_tiny import IMAGE_TOKEN_ID, VISION_END_ID, VISION_START_ID, make_hf_model


def tiny_qwen2_vl_config(*, tie: bool = False, vocab: int = 700, depth: int = 3, layers: int = 3):
    from transformers import Qwen2VLConfig
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         max_position_embeddings=4096, tie_word_embeddings=tie),
        vision_config=dict(depth=depth, embed_dim=32, hidden_size=64, mlp_ratio=3, num_heads=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, in_channels=3),
        image_token_id=IMAGE_TOKEN_ID, video_token_id=IMAGE_TOKEN_ID + 1, vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID, tie_word_embeddings=tie)


def make_qwen2_vl_model(cfg, seed: int = 0):
    """A transformers Qwen2VLForConditionalGeneration with every 1-D weight (norms, biases) perturbed."""
    from transformers import Qwen2VLForConditionalGeneration
    return make_hf_model(cfg, seed, model_cls=Qwen2VLForConditionalGeneration)
