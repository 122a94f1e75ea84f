"""The embedded tiny Qwen2-VL (jaxr1/assets/tiny_qwen2_vl, from scripts/make_tiny_checkpoint.py --family
qwen2_vl): real special tokens and chat template, and equal logits in jaxr1 and transformers."""
import os

import numpy as np

from jaxr1.assets import TINY_MODEL_DIR
from tests.hf_tiny import hf_logits
from tests.models.parity import TOL

TINY_DIR = os.path.join(os.path.dirname(TINY_MODEL_DIR), "tiny_qwen2_vl")


def test_tiny_checkpoint_tokens_and_logits_match_transformers():
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration
    from jaxr1.data import expand_image_pads, load_processors
    from jaxr1.models import qwen2_vl
    size = sum(os.path.getsize(os.path.join(TINY_DIR, n)) for n in os.listdir(TINY_DIR))
    assert size < 8e6, size
    model = qwen2_vl.load_hf(TINY_DIR)
    cfg = model.config
    tok, ip = load_processors(TINY_DIR)
    vocab = tok.get_vocab()
    assert (vocab["<|image_pad|>"], vocab["<|vision_start|>"], vocab["<|vision_end|>"], vocab["<|im_end|>"]) == (
        cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.eos_token_id)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cubes?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>How many cubes?")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (70, 98, 3), dtype=np.uint8))
    vis = ip(images=[image], return_tensors="np")
    pv, grid = np.asarray(vis["pixel_values"], np.float32), np.asarray(vis["image_grid_thw"])
    ids = np.asarray([tok(expand_image_pads(text, grid, ip.merge_size))["input_ids"]])
    mask = np.ones_like(ids)
    ref = hf_logits(Qwen2VLForConditionalGeneration.from_pretrained(TINY_DIR).eval(), ids, mask, pv, grid)
    diff = np.abs(np.asarray(model(ids, mask, pv, grid)) - ref).max()
    print(f"tiny checkpoint: {ids.shape[1]} tokens, image grid {grid.tolist()}, max |logit diff| {diff:.2e}")
    assert diff <= TOL
