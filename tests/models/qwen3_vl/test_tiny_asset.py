"""The embedded tiny Qwen3-VL checkpoint, and the image processor's patch layout that the model assumes."""
import os

import numpy as np
import pytest
from PIL import Image

import jaxr1.assets

TINY = os.path.join(os.path.dirname(jaxr1.assets.__file__), "tiny_qwen3_vl")


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoImageProcessor
    return AutoImageProcessor.from_pretrained(TINY)


def manual_patches(image: np.ndarray, mean, std, patch=16, merge=2, temporal=2) -> np.ndarray:
    """[H, W, 3] uint8 -> [N, C*T*P*P], written out independently of transformers: rows of the 2x2 merge
    blocks in raster order, each block's 4 patches in raster order, each patch flattened as (C, T, P, P)."""
    x = ((image.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    x = np.repeat(x.transpose(2, 0, 1)[None], temporal, axis=0)           # [T, C, H, W]
    c, (h, w) = x.shape[1], x.shape[2:]
    gh, gw = h // patch, w // patch
    x = x.reshape(temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    return x.transpose(2, 5, 3, 6, 1, 0, 4, 7).reshape(gh * gw, c * temporal * patch * patch)


def test_processor_patch_order_is_what_the_model_assumes(processor):
    """pixel_values from the (patch-16) image processor are the manual flattening, and patch k sits at
    `image_patch_positions(grid)[k]`, the (row, col) our rotary and position-embedding taps use."""
    from jaxr1.models.qwen2_5_vl.vision_index import image_patch_positions
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(64) // 16, np.arange(96) // 16, indexing="ij")
    img = np.stack([40 * rows, 40 * cols, rng.integers(0, 256, (64, 96))], -1).astype(np.uint8)
    out = processor(images=[Image.fromarray(img)], return_tensors="np")
    pv, grid = out["pixel_values"], out["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 6]] and pv.shape == (24, 3 * 2 * 16 * 16)
    np.testing.assert_allclose(pv, manual_patches(img, processor.image_mean, processor.image_std), atol=1e-5)
    per_patch = pv.reshape(24, 3, 2 * 16 * 16).mean(-1) * processor.image_std[0] + processor.image_mean[0]
    decoded = np.rint(per_patch[:, :2] * 255 / 40).astype(int)
    assert np.array_equal(decoded, image_patch_positions(grid[0], 2))


def test_tiny_checkpoint_loads_in_both_and_agrees(processor):
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
    from jaxr1.models import qwen3_vl
    from tests.hf_tiny import hf_logits
    tok = AutoTokenizer.from_pretrained(TINY)
    hf = Qwen3VLForConditionalGeneration.from_pretrained(TINY).eval()
    ours = qwen3_vl.load_hf(TINY)
    cfg = ours.config
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id == hf.config.image_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") == cfg.eos_token_id
    assert len(tok) == cfg.text.vocab_size and len(cfg.vision.deepstack_visual_indexes) == 3
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cubes?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many")
    assert text.endswith("<|im_start|>assistant\n")
    img = np.random.default_rng(1).integers(0, 256, (100, 70, 3)).astype(np.uint8)
    out = processor(images=[Image.fromarray(img)], return_tensors="np")
    n = int(out["image_grid_thw"].prod()) // 4
    ids = np.asarray([tok(text.replace("<|image_pad|>", "<|image_pad|>" * n))["input_ids"]])
    mask = np.ones_like(ids)
    ref = hf_logits(hf, ids, mask, out["pixel_values"], out["image_grid_thw"])
    diff = np.abs(ref - np.asarray(ours(ids, mask, out["pixel_values"], out["image_grid_thw"]))).max()
    print(f"tiny checkpoint, processor image {out['image_grid_thw'].tolist()}: max |logit diff| {diff:.3e}")
    assert diff <= 1e-4
    assert sum(os.path.getsize(os.path.join(TINY, f)) for f in os.listdir(TINY)) < 8e6
