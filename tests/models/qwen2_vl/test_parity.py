"""Logit parity with transformers' Qwen2VLForConditionalGeneration on tiny random configs (fp32).

The checks (`check`, and `first_divergence` naming the first stage that differs) are those of
tests/models/parity.py: they only use the model API the families share."""
import numpy as np

from tests.hf_tiny import left_pad, prompt_ids, random_image_inputs
from tests.models.parity import (check, check_mixed_batch_with_left_padding, check_one_image,
                                 check_padding_does_not_change_logits, check_text_only_left_padded)


def test_text_only_left_padded(qwen2_vl_pair):
    check_text_only_left_padded(qwen2_vl_pair)


def test_one_image(qwen2_vl_pair):
    check_one_image(qwen2_vl_pair)


def test_two_images_of_different_sizes_in_one_prompt(qwen2_vl_pair):
    grids = [(1, 4, 6), (1, 8, 4)]
    pv, g = random_image_inputs(grids, seed=3)
    check(qwen2_vl_pair, [prompt_ids(8, grids, seed=4)], pv, g, name="two images")


def test_mixed_batch_with_left_padding(qwen2_vl_pair):
    check_mixed_batch_with_left_padding(qwen2_vl_pair)


def test_large_image_attends_over_the_whole_frame(qwen2_vl_pair):
    # 16x20 patches: 2.5-VL would split this into windows; Qwen2-VL must attend over all 320 patches.
    grids = [(1, 16, 20)]
    pv, g = random_image_inputs(grids, seed=6)
    check(qwen2_vl_pair, [prompt_ids(6, grids, seed=6)], pv, g, name="whole frame")


def test_layout_is_processor_order(qwen2_vl_pair):
    """No windows: patches stay in processor order, one window per frame, restore is the identity."""
    from jaxr1.models.qwen2_vl import prepare_inputs
    _, _, model = qwen2_vl_pair
    grids = [(1, 16, 20), (1, 4, 6)]
    pv, g = random_image_inputs(grids, seed=8)
    ids, mask = left_pad([prompt_ids(4, grids, seed=8)])
    vision = prepare_inputs(model.config, ids, mask, pv, g)[0].vision
    n = 16 * 20
    assert np.array_equal(np.asarray(vision.patches)[0, :n], pv[:n])
    assert np.array_equal(np.asarray(vision.window_ids), np.asarray(vision.frame_ids))
    assert np.array_equal(np.asarray(vision.restore)[0, :n // 4], np.arange(n // 4))


def test_padding_does_not_change_logits(qwen2_vl_pair):
    """Bucket padding (extra image slots, longer slots) must not leak into attention."""
    check_padding_does_not_change_logits(qwen2_vl_pair)
