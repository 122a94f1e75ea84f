"""Prompt token ids, <|image_pad|> expansion and batch layout match what Qwen2.5-VL's processor produces."""
import numpy as np
import pytest

from jaxr1.data import R1_SYSTEM_PROMPT, RawRow, Preprocessor, bucket_length, build_dataset, collate
from tests.data.conftest import config, make_image, save_image, write_jsonl

PAD = "<|image_pad|>"


def _preprocessor(processors, **kw):
    return Preprocessor(*processors, system_prompt=R1_SYSTEM_PROMPT, **kw)


def _row(tmp_path, sizes, question="How many?"):
    refs = [save_image(str(tmp_path / f"i{k}.png"), h, w, k) for k, (h, w) in enumerate(sizes)]
    return RawRow({"images": refs, "problem": question, "solution": "1"}, "mem", 0, str(tmp_path))


def test_ids_equal_chat_template_plus_manual_expansion(tmp_path, processors):
    tok, ip = processors
    sizes = [(60, 80), (150, 50)]
    ex = _preprocessor(processors).process(_row(tmp_path, sizes))
    images = [make_image(h, w, k) for k, (h, w) in enumerate(sizes)]
    messages = [{"role": "system", "content": R1_SYSTEM_PROMPT},
                {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": "How many?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    grid = ip(images=images, return_tensors="np")["image_grid_thw"]
    for g in grid:  # as Qwen2_5_VLProcessor: one pad at a time, via a placeholder
        text = text.replace(PAD, "<|placeholder|>" * (int(g.prod()) // 4), 1)
    want = tok(text.replace("<|placeholder|>", PAD))["input_ids"]
    assert ex.input_ids.tolist() == want
    pad_id = tok.convert_tokens_to_ids(PAD)
    assert (ex.input_ids == pad_id).sum() == sum(int(g.prod()) // 4 for g in grid)
    np.testing.assert_array_equal(ex.image_grid_thw, grid)
    assert ex.pixel_values.shape == (int(grid.prod(1).sum()), 3 * 2 * 14 * 14)


def _hf_processor(tok, ip):
    """Qwen2_5_VLProcessor without its video processor (which needs torchvision)."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnly(Qwen2_5_VLProcessor):
        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor, tokenizer):
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=tokenizer.chat_template)
            self.image_token, self.video_token = PAD, "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(PAD)
            self.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")

    try:
        return ImageOnly(ip, tok)
    except Exception as e:  # a transformers version whose processor cannot be built this way
        pytest.skip(f"cannot build Qwen2_5_VLProcessor here: {e}")


def test_batch_matches_hf_processor(tmp_path, processors):
    tok, ip = processors
    save_image(str(tmp_path / "a.png"), 60, 80)
    save_image(str(tmp_path / "b.png"), 120, 40, 1)
    rows = [{"image": "a.png", "problem": "First?", "solution": "1"},
            {"problem": "Text only?", "solution": "2"},
            {"images": ["b.png", "a.png"], "problem": "Both?", "solution": "3"}]
    ds = build_dataset(config(write_jsonl(tmp_path / "t.jsonl", rows), batch_size=3, system_prompt=None), *processors)
    batch = next(iter(ds))
    texts = [tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": q}]}],
        tokenize=False, add_generation_prompt=True) for n, q in ((1, "First?"), (0, "Text only?"), (2, "Both?"))]
    images = [make_image(60, 80), make_image(120, 40, 1), make_image(60, 80)]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        hf = _hf_processor(tok, ip)(text=texts, images=images, padding=True, return_tensors="np")
    finally:
        tok.padding_side = side
    t = hf["input_ids"].shape[1]
    assert batch.input_ids.shape[1] == bucket_length(t, "multiple", 64) and batch.input_ids.shape[1] % 64 == 0
    np.testing.assert_array_equal(batch.input_ids[:, -t:], hf["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask[:, -t:], hf["attention_mask"])
    assert (batch.attention_mask[:, :-t] == 0).all() and (batch.input_ids[:, :-t] == tok.pad_token_id).all()
    np.testing.assert_allclose(batch.pixel_values, hf["pixel_values"], atol=1e-6)
    np.testing.assert_array_equal(batch.image_grid_thw, hf["image_grid_thw"])
    assert batch.pixel_values.dtype == np.float32 and batch.input_ids.dtype == np.int32
    assert batch.image_counts.tolist() == [1, 0, 2]


def test_batch_feeds_model_prepare_inputs(tmp_path, processors):
    from jaxr1.models.qwen2_5_vl import ModelConfig, prepare_inputs
    from jaxr1.assets import tiny_model_dir

    save_image(str(tmp_path / "a.png"))
    rows = [{"image": "a.png", "problem": "q", "solution": "1"}, {"problem": "text", "solution": "2"}]
    batch = next(iter(build_dataset(config(write_jsonl(tmp_path / "t.jsonl", rows)), *processors)))
    cfg = ModelConfig.from_hf_dir(tiny_model_dir())
    inputs, deltas = prepare_inputs(cfg, batch.input_ids, batch.attention_mask, batch.pixel_values,
                                    batch.image_grid_thw)
    assert inputs.input_ids.shape == batch.input_ids.shape and len(deltas) == 2


@pytest.mark.parametrize("n, pad_to, want", [(1, "multiple", 64), (64, "multiple", 64), (65, "multiple", 128),
                                             (65, "pow2", 128), (200, "pow2", 256), (10, "max", 512)])
def test_bucket_length(n, pad_to, want):
    assert bucket_length(n, pad_to, 64, max_length=500) == want


def test_collate_keeps_batch_size_with_filler_rows(tmp_path, processors):
    pre = _preprocessor(processors)
    ex = pre.process(_row(tmp_path, [(60, 80)]))
    batch = collate([ex], pad_id=0, batch_size=3, multiple=16)
    assert batch.input_ids.shape == (3, bucket_length(len(ex.input_ids), "multiple", 16))
    assert batch.valid.tolist() == [True, False, False] and len(batch.reward_inputs) == 3
    # filler rows repeat the last real row, images included, so shapes stay consistent with image_counts
    assert batch.image_counts.tolist() == [1, 1, 1] and len(batch.image_grid_thw) == 3
