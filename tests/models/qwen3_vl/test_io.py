"""Qwen3-VL HF checkpoint I/O: key names, round trips, sharding, dtype, published configs and bad input."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxr1.models import qwen3_vl
from jaxr1.models.qwen3_vl import CheckpointError, ConfigError
from tests.hf_tiny import hf_logits
from tests.models.parity import (assert_same_tensors, check_bf16_load_error_is_bounded, io_batch, logits,
                                 read_dir_tensors)
from tests.models.qwen3_vl.tiny import PATCH

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")


@pytest.fixture(scope="module")
def batch():
    return io_batch(patch=PATCH)


def test_round_trip_is_bit_exact_and_transformers_loads_it(hf_pair, batch, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration
    hf_model, path, model = hf_pair
    qwen3_vl.save_hf(model, str(tmp_path), source_dir=path)
    a, b = read_dir_tensors(path), read_dir_tensors(str(tmp_path))
    assert_same_tensors(a, b)   # save_pretrained drops lm_head.weight when tied, and so do we
    back = Qwen3VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, pv, g = batch
    assert np.array_equal(hf_logits(hf_model, ids, mask, pv, g), hf_logits(back, ids, mask, pv, g))


def test_sharded_checkpoint_and_sharded_save(hf_pair, batch, tmp_path):
    hf_model, _, model = hf_pair
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert os.path.isfile(tmp_path / "hf" / "model.safetensors.index.json")
    assert np.array_equal(logits(qwen3_vl.load_hf(str(tmp_path / "hf")), batch), logits(model, batch))
    qwen3_vl.save_hf(model, str(tmp_path / "ours"), max_shard_bytes=200_000)
    index = json.load(open(tmp_path / "ours" / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    a = qwen3_vl.params.hf_state_dict(model)
    b = qwen3_vl.params.hf_state_dict(qwen3_vl.load_hf(str(tmp_path / "ours")))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_bf16_load_error_is_bounded(hf_pair, batch):
    check_bf16_load_error_is_bounded(hf_pair, batch, qwen3_vl.load_hf)


@pytest.mark.parametrize("size", ["2b", "4b", "8b"])
def test_published_configs_parse_with_the_right_sizes(size):
    import jax
    import torch
    from flax import nnx
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    path = os.path.join(CONFIGS, f"qwen3_vl_{size}_instruct.json")
    cfg = qwen3_vl.ModelConfig.from_hf_dict(json.load(open(path)))
    assert cfg == getattr(qwen3_vl.ModelConfig, f"qwen3_vl_{size}")()
    assert cfg.text.mrope_section == (24, 20, 20) and cfg.text.rope_theta == 5e6 and cfg.vision.patch_size == 16
    abstract = nnx.eval_shape(lambda: qwen3_vl.Qwen3VL(cfg, "bfloat16"))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    hf_cfg = Qwen3VLConfig.from_json_file(path)
    assert hf_cfg.text_config.rope_parameters["rope_theta"] == cfg.text.rope_theta
    with torch.device("meta"):
        hf = Qwen3VLForConditionalGeneration(hf_cfg)
    # transformers counts a tied lm_head once (parameters() deduplicates shared tensors).
    theirs = sum(p.numel() for p in hf.parameters())
    print(f"Qwen3-VL-{size.upper()}: jaxr1 {ours:,} parameters, transformers {theirs:,}")
    assert ours == theirs
    # The round trip through to_hf_dict keeps every field.
    assert qwen3_vl.ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_transformers_5_layout_parses(hf_pair):
    _, path, model = hf_pair
    d = json.load(open(os.path.join(path, "config.json")))
    assert "rope_parameters" in d["text_config"] and d["vision_config"]["model_type"] == "qwen3_vl_vision"
    cfg = qwen3_vl.ModelConfig.from_hf_dict(d)
    assert cfg == model.config and cfg.text.head_dim == 24 and cfg.vision.deepstack_visual_indexes == (0, 2)


def test_other_architecture(tmp_path):
    json.dump({"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]},
              open(tmp_path / "config.json", "w"))
    with pytest.raises(ConfigError, match=f"{tmp_path}/config.json.*model_type='qwen2_5_vl'"):
        qwen3_vl.load_hf(str(tmp_path))


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="/no/such/dir"):
        qwen3_vl.load_hf("/no/such/dir")


def test_missing_key_is_named(hf_pair, tmp_path):
    _, path, _ = hf_pair
    tensors = read_dir_tensors(path)
    del tensors["model.visual.deepstack_merger_list.1.norm.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(path, "config.json"), tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"deepstack_merger_list\.1\.norm\.bias"):
        qwen3_vl.load_hf(str(tmp_path))


def test_shape_mismatch_names_file_and_key(hf_pair, tmp_path):
    _, path, _ = hf_pair
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["vision_config"]["num_position_embeddings"] = 49
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 'model\.visual\.pos_embed\.weight' has shape"):
        qwen3_vl.load_hf(str(tmp_path))


def test_vision_defaults_are_transformers_defaults():
    """Our VisionConfig defaults (the 8B tower) are transformers' Qwen3VLVisionConfig defaults."""
    import dataclasses
    from transformers import Qwen3VLVisionConfig
    hf = Qwen3VLVisionConfig()
    ours = qwen3_vl.VisionConfig()
    for f in dataclasses.fields(ours):
        if f.name not in ("out_hidden_size", "rope_theta"):   # HF's out_hidden_size default (3584) fits no release
            assert tuple(np.atleast_1d(getattr(hf, f.name))) == tuple(np.atleast_1d(getattr(ours, f.name))), f.name


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["text_config"].update(attention_bias=True), "attention_bias"),
    (lambda d: d["text_config"]["rope_scaling"].update(rope_type="yarn"), "rope_type 'yarn'"),
    (lambda d: d["text_config"].pop("hidden_size"), "missing text_config key 'hidden_size'"),
    (lambda d: d["vision_config"].update(deepstack_visual_indexes=[8, 30]), "deepstack_visual_indexes"),
    (lambda d: d["vision_config"].update(out_hidden_size=2048), "out_hidden_size"),
    (lambda d: d.pop("vision_config"), "vision_config"),
])
def test_bad_configs_are_named(edit, match):
    d = json.load(open(os.path.join(CONFIGS, "qwen3_vl_8b_instruct.json")))
    edit(d)
    with pytest.raises(ConfigError, match=match):
        qwen3_vl.ModelConfig.from_hf_dict(d)
