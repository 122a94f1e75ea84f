"""Qwen2-VL HF checkpoint I/O: published configs and sizes, both key and config layouts, round trips."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxr1.models import qwen2_vl
from jaxr1.models.qwen2_vl import ConfigError
from tests.hf_tiny import hf_logits
from tests.models.parity import (assert_same_tensors, check_bf16_load_error_is_bounded, io_batch, logits,
                                 read_dir_tensors, write_language_model_layout_4x)

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")


@pytest.fixture(scope="module")
def batch():
    return io_batch()


@pytest.mark.parametrize("size,low,high", [("2b", 2.20e9, 2.22e9), ("7b", 8.28e9, 8.30e9)])
def test_published_configs_parse_with_the_right_sizes(size, low, high):
    import jax
    import torch
    from flax import nnx
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    path = os.path.join(CONFIGS, f"qwen2_vl_{size}_instruct.json")
    cfg = qwen2_vl.ModelConfig.from_hf_dict(json.load(open(path)))
    assert cfg == getattr(qwen2_vl.ModelConfig, f"qwen2_vl_{size}")()
    assert cfg.text.mrope_section == (16, 24, 24) and cfg.text.rope_theta == 1e6 and cfg.text.rms_norm_eps == 1e-6
    assert cfg.vision.hidden_act == "quick_gelu" and cfg.vision.intermediate_size == 4 * 1280
    abstract = nnx.eval_shape(lambda: qwen2_vl.Qwen2_VL(cfg, "bfloat16"))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_json_file(path))
    theirs = sum(p.numel() for p in hf.parameters())
    print(f"Qwen2-VL-{size.upper()}: jaxr1 {ours:,} parameters, transformers {theirs:,}")
    assert ours == theirs
    assert low < ours < high, ours   # published as 2.21B / 8.29B


def test_config_round_trips_through_the_5x_layout():
    for size in ("2b", "7b"):
        cfg = getattr(qwen2_vl.ModelConfig, f"qwen2_vl_{size}")()
        assert qwen2_vl.ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_load_save_round_trip_is_bit_exact_and_loads_in_transformers(qwen2_vl_pair, batch, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration
    hf_model, path, model = qwen2_vl_pair
    qwen2_vl.save_hf(model, str(tmp_path), source_dir=path)
    a, b = read_dir_tensors(path), read_dir_tensors(str(tmp_path))
    a.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    assert_same_tensors(a, b)
    assert os.path.isfile(tmp_path / "generation_config.json")
    back = Qwen2VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    assert back.config.tie_word_embeddings == model.config.tie_word_embeddings
    ids, mask, pv, g = batch
    assert np.array_equal(hf_logits(hf_model, ids, mask, pv, g), hf_logits(back, ids, mask, pv, g))
    assert np.array_equal(logits(qwen2_vl.load_hf(str(tmp_path)), batch), logits(model, batch))


def test_language_model_key_layout_and_flat_4x_config(qwen2_vl_pair, batch, tmp_path):
    """`model.language_model.*` / `model.visual.*` keys, with the released checkpoints' flat 4.x config.json
    (rope_scaling type mrope, in_chans, old vision model_type 'qwen2_vl', no hidden_act)."""
    _, path, model = qwen2_vl_pair
    flat = write_language_model_layout_4x(path, tmp_path)
    vision = flat["vision_config"]
    vision["model_type"] = "qwen2_vl"
    for k in ("hidden_act", "rope_parameters"):
        vision.pop(k)
    json.dump(flat, open(tmp_path / "config.json", "w"))
    assert qwen2_vl.ModelConfig.from_hf_dir(str(tmp_path)) == model.config
    assert np.array_equal(logits(qwen2_vl.load_hf(str(tmp_path)), batch), logits(model, batch))


def test_bf16_load_error_is_bounded(qwen2_vl_pair, batch):
    check_bf16_load_error_is_bounded(qwen2_vl_pair, batch, qwen2_vl.load_hf)


def test_other_families_are_refused(tmp_path):
    json.dump(json.load(open(os.path.join(os.path.dirname(CONFIGS), "..", "configs",
                                          "qwen2_5_vl_3b_instruct.json"))), open(tmp_path / "config.json", "w"))
    with pytest.raises(ConfigError, match="model_type='qwen2_5_vl'.*not a Qwen2-VL config"):
        qwen2_vl.load_hf(str(tmp_path))
    from jaxr1.models import qwen2_5_vl
    with pytest.raises(ConfigError, match="not a Qwen2.5-VL config"):
        qwen2_5_vl.ModelConfig.from_hf_dict(json.load(open(os.path.join(CONFIGS, "qwen2_vl_2b_instruct.json"))))


def test_2_5_vl_tensors_under_a_qwen2_vl_config_name_the_missing_key(hf_pair, qwen2_vl_pair, tmp_path):
    _, path, _ = hf_pair
    save_file(read_dir_tensors(path), str(tmp_path / "model.safetensors"))
    json.dump(qwen2_vl_pair[2].config.to_hf_dict(), open(tmp_path / "config.json", "w"))
    with pytest.raises(qwen2_vl.CheckpointError, match=r"missing keys \['visual.blocks.0.norm1.bias'"):
        qwen2_vl.load_hf(str(tmp_path))
