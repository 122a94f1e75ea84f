"""Checks shared by every family's model tests (Qwen2.5-VL in tests/models/, Qwen2-VL and Qwen3-VL in their
folders): the tiny HF pair, logit parity with transformers (`check`, naming the first stage that differs),
the common parity cases, and checkpoint-file helpers. They use only the surface the families share
(`prepare_inputs`, `encode_images`, `merged_features`, `embed`, `hidden_states`, `forward`)."""
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from tests.hf_tiny import hf_logits, left_pad, prompt_ids, random_image_inputs

TOL = 1e-4
IO_GRIDS = [(1, 6, 8), (1, 4, 4)]


def make_pair(request, tmp_path_factory, hf_config, hf_model, load_hf, name: str):
    """(transformers model, saved dir, jaxr1 fp32 model) for `request.param` ("untied" or "tied")."""
    cfg = hf_config(tie=request.param == "tied")
    model = hf_model(cfg, seed=1 if request.param == "tied" else 0)
    path = tmp_path_factory.mktemp(f"{name}_{request.param}")
    model.save_pretrained(path)
    return model, str(path), load_hf(str(path), dtype="float32")


def images(jax_model, grids, seed: int = 0):
    """random_image_inputs with the patch size of the model's family."""
    return random_image_inputs(grids, seed, patch=jax_model.config.vision.patch_size)


def first_divergence(hf_model, jax_model, ids, mask, pv=None, grid=None) -> str:
    """Name the first stage (vision merger, DeepStack merger j, embeddings, text layer i) beyond TOL."""
    import torch
    inputs, _ = jax_model.prepare_inputs(jax_model.config, ids, mask, pv, grid)
    valid = mask.astype(bool)
    if pv is not None:
        with torch.no_grad():
            out = hf_model.model.get_image_features(torch.as_tensor(pv), torch.as_tensor(grid))
        index = np.asarray(inputs.image_index)
        rows = index[valid & (index >= 0)]
        feats = jax_model.encode_images(inputs.vision)
        deep = getattr(out, "deepstack_features", None)
        refs = [("vision merger" if deep else "vision tower", torch.cat(out.pooler_output),
                 jax_model.merged_features(feats))]
        refs += [(f"DeepStack merger {j}", torch.cat(f), feats[1][j]) for j, f in enumerate(deep or ())]
        for name, ref, ours in refs:
            d = np.abs(ref.numpy() - np.asarray(ours)[rows]).max()
            if d > TOL:
                return f"{name} (max diff {d:.2e})"
    _, ref_hidden = hf_logits(hf_model, ids, mask, pv, grid, hidden=True)
    _, _, per_layer = jax_model.hidden_states(inputs, collect_hidden=True)
    ours = [np.asarray(jax_model.embed(inputs))] + [np.asarray(h) for h in per_layer]
    # transformers' hidden_states: embeddings, layer outputs (Qwen3-VL: before the DeepStack add), final norm.
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


# ---- Parity cases every family runs ----
def check_text_only_left_padded(hf_pair):
    check(hf_pair, [prompt_ids(20, seed=0), prompt_ids(9, seed=1), prompt_ids(14, seed=2)], name="text only")


def check_one_image(hf_pair):
    grids = [(1, 6, 8)]
    pv, g = images(hf_pair[2], grids)
    check(hf_pair, [prompt_ids(10, grids)], pv, g, name="one image")


def check_mixed_batch_with_left_padding(hf_pair):
    rows_grids = [[], [(1, 6, 6)], [(1, 4, 4), (1, 10, 6)]]
    rows = [prompt_ids(6 + 3 * i, g, seed=i) for i, g in enumerate(rows_grids)]
    flat = [g for gs in rows_grids for g in gs]
    pv, g = images(hf_pair[2], flat, seed=5)
    check(hf_pair, rows, pv, g, name="mixed left-padded batch")


def check_padding_does_not_change_logits(hf_pair):
    """Bucket padding (extra image slots, longer slots) must not leak into attention (or DeepStack)."""
    _, _, model = hf_pair
    grids = [(1, 6, 8), (1, 4, 4)]
    pv, g = images(model, grids, seed=7)
    ids, mask = left_pad([prompt_ids(5, grids[:1]), prompt_ids(7, grids[1:], seed=1)])
    tight, _ = model.prepare_inputs(model.config, ids, mask, pv, g, num_image_slots=2, patches_per_slot=48)
    loose, _ = model.prepare_inputs(model.config, ids, mask, pv, g, num_image_slots=4, patches_per_slot=256)
    a, b = np.asarray(model.forward(tight)), np.asarray(model.forward(loose))
    assert np.abs(a - b)[mask.astype(bool)].max() <= 1e-5


# ---- Checkpoint I/O ----
def io_batch(patch: int = 14):
    """The I/O tests' batch: two images in two rows, a text-only row, left padded."""
    pv, g = random_image_inputs(IO_GRIDS, seed=11, patch=patch)
    ids, mask = left_pad([prompt_ids(9, IO_GRIDS[:1], seed=1), prompt_ids(5, IO_GRIDS[1:], seed=2),
                          prompt_ids(12, seed=3)])
    return ids, mask, pv, g


def logits(model, batch):
    ids, mask, pv, g = batch
    return np.asarray(model(ids, mask, pv, g))[mask.astype(bool)]


def read_dir_tensors(d):
    out = {}
    for name in os.listdir(d):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, name)))
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def check_bf16_load_error_is_bounded(hf_pair, batch, load_hf):
    hf_model, path, _ = hf_pair
    ids, mask, pv, g = batch
    ref = hf_logits(hf_model, ids, mask, pv, g)[mask.astype(bool)]
    bf16 = load_hf(path, dtype="bfloat16")
    assert str(bf16.dtype) == "bfloat16"
    diff = np.abs(logits(bf16, batch).astype(np.float32) - ref).max()
    scale = np.abs(ref).max()
    print(f"bf16 vs fp32 reference: max |diff| {diff:.3e}, max |logit| {scale:.2f}")
    # bf16 keeps 8 significant bits (relative step 2^-8 = 0.39%); errors of that order compound over ~10
    # roundings per layer, so 4% of the logit range (about 10 bf16 ulps) is the bound we accept.
    assert diff <= 0.04 * scale


def write_language_model_layout_4x(path: str, out_dir) -> dict:
    """Write `path`'s tensors under the `model.language_model.*` / `model.visual.*` keys into out_dir and
    return its config.json in the transformers-4.x flat layout (rope_scaling type mrope, in_chans), for the
    caller to edit further and write."""
    import json
    renamed = {}
    for k, v in read_dir_tensors(path).items():
        k = "model.language_model." + k[len("model."):] if k.startswith("model.") else k
        k = "model." + k if k.startswith("visual.") else k
        renamed[k] = v
    save_file(renamed, os.path.join(str(out_dir), "model.safetensors"))
    cfg = json.load(open(os.path.join(path, "config.json")))
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {**cfg, **{k: v for k, v in text.items() if k not in ("model_type", "dtype")},
            "rope_theta": rope["rope_theta"], "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]}}
    flat["vision_config"]["in_chans"] = flat["vision_config"].pop("in_channels")
    return flat
