"""Logit parity with transformers' Qwen2_5_VLForConditionalGeneration on tiny random configs (fp32)."""
import numpy as np
import pytest

from tests.hf_tiny import hf_logits, left_pad, prompt_ids, random_image_inputs

TOL = 1e-4


def first_divergence(hf_model, jax_model, ids, mask, pv=None, grid=None) -> str:
    """Name the first stage (vision tower, embeddings, text layer i) whose output differs beyond TOL."""
    import torch
    from jaxr1.models.qwen2_5_vl import prepare_inputs
    inputs, _ = prepare_inputs(jax_model.config, ids, mask, pv, grid)
    valid = mask.astype(bool)
    if pv is not None:
        with torch.no_grad():
            ref = torch.cat(hf_model.model.get_image_features(torch.as_tensor(pv), torch.as_tensor(grid))
                            .pooler_output).numpy()
        ours = np.asarray(jax_model.encode_images(inputs.vision))[np.asarray(inputs.image_index)[valid & (
            np.asarray(inputs.image_index) >= 0)]]
        if np.abs(ref - ours).max() > TOL:
            return f"vision tower (max diff {np.abs(ref - ours).max():.2e})"
    _, ref_hidden = hf_logits(hf_model, ids, mask, pv, grid, hidden=True)
    _, _, per_layer = jax_model.hidden_states(inputs, collect_hidden=True)
    ours = [np.asarray(jax_model.embed(inputs))] + [np.asarray(h) for h in per_layer]
    for i, (r, o) in enumerate(zip(ref_hidden[:-1], ours[:-1])):
        d = np.abs(r - o)[valid].max()
        if d > TOL * max(1.0, np.abs(r).max()):
            return f"{'embeddings' if i == 0 else f'text layer {i - 1}'} (max diff {d:.2e})"
    return "final norm / lm_head"


def check(hf_pair, rows, pvs=None, grids=None):
    hf_model, _, jax_model = hf_pair
    ids, mask = left_pad(rows)
    ref = hf_logits(hf_model, ids, mask, pvs, grids)
    ours = np.asarray(jax_model(ids, mask, pvs, grids))
    valid = mask.astype(bool)
    diff = np.abs(ref - ours)[valid].max()
    print(f"max |logit diff| = {diff:.3e}")
    assert diff <= TOL, f"logits differ by {diff:.2e}; first divergence: " \
                        f"{first_divergence(hf_model, jax_model, ids, mask, pvs, grids)}"
    return diff


def test_text_only_left_padded(hf_pair):
    check(hf_pair, [prompt_ids(20, seed=0), prompt_ids(9, seed=1), prompt_ids(14, seed=2)])


def test_one_image(hf_pair):
    grids = [(1, 6, 8)]
    pv, g = random_image_inputs(grids)
    check(hf_pair, [prompt_ids(10, grids)], pv, g)


def test_two_images_of_different_sizes_in_one_prompt(hf_pair):
    grids = [(1, 4, 6), (1, 8, 4)]
    pv, g = random_image_inputs(grids, seed=3)
    check(hf_pair, [prompt_ids(8, grids, seed=4)], pv, g)


def test_mixed_batch_with_left_padding(hf_pair):
    rows_grids = [[], [(1, 6, 6)], [(1, 4, 4), (1, 10, 6)]]
    rows = [prompt_ids(6 + 3 * i, g, seed=i) for i, g in enumerate(rows_grids)]
    flat = [g for gs in rows_grids for g in gs]
    pv, g = random_image_inputs(flat, seed=5)
    check(hf_pair, rows, pv, g)


def test_image_with_several_attention_windows(hf_pair):
    # window_size 56 px = 2x2 merged tokens; a 16x20-patch image has 4x5 windows (some partial at the edges).
    grids = [(1, 16, 20)]
    pv, g = random_image_inputs(grids, seed=6)
    check(hf_pair, [prompt_ids(6, grids, seed=6)], pv, g)


def test_padding_does_not_change_logits(hf_pair):
    """Bucket padding (extra image slots, longer slots) must not leak into attention."""
    from jaxr1.models.qwen2_5_vl import prepare_inputs
    _, _, jax_model = hf_pair
    grids = [(1, 6, 8), (1, 4, 4)]
    pv, g = random_image_inputs(grids, seed=7)
    ids, mask = left_pad([prompt_ids(5, grids[:1]), prompt_ids(7, grids[1:], seed=1)])
    tight, _ = prepare_inputs(jax_model.config, ids, mask, pv, g, num_image_slots=2, patches_per_slot=48)
    loose, _ = prepare_inputs(jax_model.config, ids, mask, pv, g, num_image_slots=4, patches_per_slot=256)
    a, b = np.asarray(jax_model.forward(tight)), np.asarray(jax_model.forward(loose))
    assert np.abs(a - b)[mask.astype(bool)].max() <= 1e-5
