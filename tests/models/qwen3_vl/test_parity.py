"""Logit parity with transformers' Qwen3VLForConditionalGeneration on tiny random configs (fp32)."""
import numpy as np

from tests.hf_tiny import left_pad, prompt_ids
from tests.models.parity import (check, check_mixed_batch_with_left_padding, check_one_image,
                                 check_padding_does_not_change_logits, check_text_only_left_padded)
from tests.models.qwen3_vl.tiny import random_image_inputs


def test_text_only_left_padded(hf_pair):
    check_text_only_left_padded(hf_pair)


def test_one_image(hf_pair):
    check_one_image(hf_pair)


def test_two_images_of_different_sizes_in_one_prompt(hf_pair):
    # 4x6 patches shrinks the 6x6 learned grid, 12x4 stretches it along rows.
    grids = [(1, 4, 6), (1, 12, 4)]
    pv, g = random_image_inputs(grids, seed=3)
    check(hf_pair, [prompt_ids(8, grids, seed=4)], pv, g, name="two images")


def test_mixed_batch_with_left_padding(hf_pair):
    check_mixed_batch_with_left_padding(hf_pair)


def test_deepstack_matters(hf_pair):
    """Guards the parity tests: without the DeepStack features the image-prompt logits do change."""
    from jaxr1.models.qwen3_vl import prepare_inputs
    _, _, model = hf_pair
    grids = [(1, 6, 8)]
    pv, g = random_image_inputs(grids)
    ids, mask = left_pad([prompt_ids(10, grids)])
    inputs, _ = prepare_inputs(model.config, ids, mask, pv, g)
    feats = model.encode_images(inputs.vision)
    hidden, _ = model.language_model(model.embed(inputs, feats), inputs.positions, inputs.attention_mask)
    without = np.asarray(model.language_model.logits(hidden))
    assert np.abs(without - np.asarray(model.forward(inputs))).max() > 1e-2


def test_padding_does_not_change_logits(hf_pair):
    """Bucket padding (extra image slots, longer slots) must not leak into attention or DeepStack."""
    check_padding_does_not_change_logits(hf_pair)


def test_pos_embed_taps_match_transformers():
    """Bilinear taps and weights of the learned position grid, bit-identical to transformers' helper."""
    import torch
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights
    from jaxr1.models.qwen3_vl import VisionConfig
    from jaxr1.models.qwen3_vl.vision_index import pos_embed_taps
    cfg = VisionConfig(num_position_embeddings=2304)
    grids = [(1, 4, 6), (2, 34, 20), (1, 2, 96)]
    idx, w = get_vision_interpolation_indices_and_weights(torch.tensor(grids), 48, mode="bilinear",
                                                           align_corners=True, spatial_merge_size=2)
    ours = [pos_embed_taps(g, cfg) for g in grids]
    assert np.array_equal(np.concatenate([o[0] for o in ours]), idx.numpy())
    assert np.array_equal(np.concatenate([o[1] for o in ours]), w.numpy())
