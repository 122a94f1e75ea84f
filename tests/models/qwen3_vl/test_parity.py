"""Logit parity with transformers' Qwen3VLForConditionalGeneration on tiny random configs (fp32)."""
import numpy as np

from tests.hf_tiny import hf_logits, left_pad, prompt_ids
from tests.models.qwen3_vl.tiny import random_image_inputs

TOL = 1e-4


def first_divergence(hf_model, jax_model, ids, mask, pv=None, grid=None) -> str:
    """Name the first stage (vision merger, DeepStack merger j, embeddings, text layer i) beyond TOL."""
    import torch
    from jaxr1.models.qwen3_vl import prepare_inputs
    inputs, _ = prepare_inputs(jax_model.config, ids, mask, pv, grid)
    valid = mask.astype(bool)
    if pv is not None:
        with torch.no_grad():
            out = hf_model.model.get_image_features(torch.as_tensor(pv), torch.as_tensor(grid))
        index = np.asarray(inputs.image_index)
        rows = index[valid & (index >= 0)]
        feats, deep = jax_model.encode_images(inputs.vision)
        refs = [("vision merger", torch.cat(out.pooler_output), feats)]
        refs += [(f"DeepStack merger {j}", torch.cat(f), deep[j]) for j, f in enumerate(out.deepstack_features)]
        for name, ref, ours in refs:
            d = np.abs(ref.numpy() - np.asarray(ours)[rows]).max()
            if d > TOL:
                return f"{name} (max diff {d:.2e})"
    _, ref_hidden = hf_logits(hf_model, ids, mask, pv, grid, hidden=True)
    _, _, per_layer = jax_model.hidden_states(inputs, collect_hidden=True)
    ours = [np.asarray(jax_model.embed(inputs))] + [np.asarray(h) for h in per_layer]
    # transformers' hidden_states: embeddings, layer outputs (before the DeepStack add), final norm.
    for i, (r, o) in enumerate(zip(ref_hidden[:-1], ours[:-1])):
        d = np.abs(r - o)[valid].max()
        if d > TOL * max(1.0, np.abs(r).max()):
            return f"{'embeddings' if i == 0 else f'text layer {i - 1}'} (max diff {d:.2e})"
    return "last text layer / final norm / lm_head"


def check(hf_pair, rows, pvs=None, grids=None, name=""):
    hf_model, _, jax_model = hf_pair
    ids, mask = left_pad(rows)
    ref = hf_logits(hf_model, ids, mask, pvs, grids)
    ours = np.asarray(jax_model(ids, mask, pvs, grids))
    valid = mask.astype(bool)
    diff = np.abs(ref - ours)[valid].max()
    tied = "tied" if jax_model.config.tie_word_embeddings else "untied"
    print(f"[{tied}] {name}: max |logit diff| = {diff:.3e} (max |logit| {np.abs(ref).max():.2f})")
    assert diff <= TOL, f"logits differ by {diff:.2e}; first divergence: " \
                        f"{first_divergence(hf_model, jax_model, ids, mask, pvs, grids)}"
    return diff


def test_text_only_left_padded(hf_pair):
    check(hf_pair, [prompt_ids(20, seed=0), prompt_ids(9, seed=1), prompt_ids(14, seed=2)], name="text only")


def test_one_image(hf_pair):
    grids = [(1, 6, 8)]
    pv, g = random_image_inputs(grids)
    check(hf_pair, [prompt_ids(10, grids)], pv, g, name="one image")


def test_two_images_of_different_sizes_in_one_prompt(hf_pair):
    # 4x6 patches shrinks the 6x6 learned grid, 12x4 stretches it along rows.
    grids = [(1, 4, 6), (1, 12, 4)]
    pv, g = random_image_inputs(grids, seed=3)
    check(hf_pair, [prompt_ids(8, grids, seed=4)], pv, g, name="two images")


def test_mixed_batch_with_left_padding(hf_pair):
    rows_grids = [[], [(1, 6, 6)], [(1, 4, 4), (1, 10, 6)]]
    rows = [prompt_ids(6 + 3 * i, g, seed=i) for i, g in enumerate(rows_grids)]
    flat = [g for gs in rows_grids for g in gs]
    pv, g = random_image_inputs(flat, seed=5)
    check(hf_pair, rows, pv, g, name="mixed left-padded batch")


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
    from jaxr1.models.qwen3_vl import prepare_inputs
    _, _, jax_model = hf_pair
    grids = [(1, 6, 8), (1, 4, 4)]
    pv, g = random_image_inputs(grids, seed=7)
    ids, mask = left_pad([prompt_ids(5, grids[:1]), prompt_ids(7, grids[1:], seed=1)])
    tight, _ = prepare_inputs(jax_model.config, ids, mask, pv, g, num_image_slots=2, patches_per_slot=48)
    loose, _ = prepare_inputs(jax_model.config, ids, mask, pv, g, num_image_slots=4, patches_per_slot=256)
    a, b = np.asarray(jax_model.forward(tight)), np.asarray(jax_model.forward(loose))
    assert np.abs(a - b)[mask.astype(bool)].max() <= 1e-5


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
