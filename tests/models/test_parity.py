"""Logit parity with transformers' Qwen2_5_VLForConditionalGeneration on tiny random configs (fp32)."""
from tests.hf_tiny import prompt_ids, random_image_inputs
from tests.models.parity import (check, check_mixed_batch_with_left_padding, check_one_image,
                                 check_padding_does_not_change_logits, check_text_only_left_padded)


def test_text_only_left_padded(hf_pair):
    check_text_only_left_padded(hf_pair)


def test_one_image(hf_pair):
    check_one_image(hf_pair)


def test_two_images_of_different_sizes_in_one_prompt(hf_pair):
    grids = [(1, 4, 6), (1, 8, 4)]
    pv, g = random_image_inputs(grids, seed=3)
    check(hf_pair, [prompt_ids(8, grids, seed=4)], pv, g, name="two images")


def test_mixed_batch_with_left_padding(hf_pair):
    check_mixed_batch_with_left_padding(hf_pair)


def test_image_with_several_attention_windows(hf_pair):
    # window_size 56 px = 2x2 merged tokens; a 16x20-patch image has 4x5 windows (some partial at the edges).
    grids = [(1, 16, 20)]
    pv, g = random_image_inputs(grids, seed=6)
    check(hf_pair, [prompt_ids(6, grids, seed=6)], pv, g, name="several windows")


def test_padding_does_not_change_logits(hf_pair):
    """Bucket padding (extra image slots, longer slots) must not leak into attention."""
    check_padding_does_not_change_logits(hf_pair)
