"""HF checkpoint I/O: layouts, sharding, dtype, round trips, the convert CLI and bad input."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxr1.models import qwen2_5_vl
from jaxr1.models.qwen2_5_vl import CheckpointError, ConfigError
from tests.hf_tiny import hf_logits
from tests.models.parity import (assert_same_tensors, check_bf16_load_error_is_bounded, io_batch, logits,
                                 read_dir_tensors, write_language_model_layout_4x)

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")


@pytest.fixture(scope="module")
def batch():
    return io_batch()


def test_bf16_load_error_is_bounded(hf_pair, batch):
    check_bf16_load_error_is_bounded(hf_pair, batch, qwen2_5_vl.load_hf)


def test_load_save_round_trip_is_bit_exact(hf_pair, tmp_path):
    _, path, model = hf_pair
    qwen2_5_vl.save_hf(model, str(tmp_path), source_dir=path)
    a, b = read_dir_tensors(path), read_dir_tensors(str(tmp_path))
    a.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    assert_same_tensors(a, b)
    assert os.path.isfile(tmp_path / "generation_config.json")


def test_convert_cli_round_trip_gives_identical_transformers_logits(hf_pair, batch, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from jaxr1.convert import main
    hf_model, path, _ = hf_pair
    assert main(["from-hf", path, str(tmp_path / "ckpt")]) == 0
    assert main(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask, pv, g = batch
    assert np.array_equal(hf_logits(hf_model, ids, mask, pv, g), hf_logits(back, ids, mask, pv, g))


def test_sharded_checkpoint_loads(hf_pair, batch, tmp_path):
    hf_model, _, model = hf_pair
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert np.array_equal(logits(qwen2_5_vl.load_hf(str(tmp_path)), batch), logits(model, batch))


def test_save_hf_shards_above_the_limit(hf_pair, tmp_path):
    _, _, model = hf_pair
    qwen2_5_vl.save_hf(model, str(tmp_path), max_shard_bytes=200_000)
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    again = qwen2_5_vl.load_hf(str(tmp_path))
    a, b = qwen2_5_vl.params.hf_state_dict(model), qwen2_5_vl.params.hf_state_dict(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_language_model_key_layout_and_flat_4x_config(hf_pair, batch, tmp_path):
    """The `model.language_model.*` / `model.visual.*` layout, with a transformers-4.x flat config.json."""
    _, path, model = hf_pair
    flat = write_language_model_layout_4x(path, tmp_path)
    json.dump(flat, open(tmp_path / "config.json", "w"))
    assert np.array_equal(logits(qwen2_5_vl.load_hf(str(tmp_path)), batch), logits(model, batch))


@pytest.mark.parametrize("name,size", [("qwen2_5_vl_3b_instruct", "3b"), ("qwen2_5_vl_7b_instruct", "7b")])
def test_published_configs_parse_with_the_right_sizes(name, size):
    import jax
    import torch
    from flax import nnx
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = qwen2_5_vl.ModelConfig.from_hf_dict(json.load(open(os.path.join(CONFIGS, name + ".json"))))
    named = getattr(qwen2_5_vl.ModelConfig, f"qwen2_5_vl_{size}")()
    assert cfg.text == named.text and cfg.vision == named.vision and cfg.tie_word_embeddings == named.tie_word_embeddings
    assert cfg.text.mrope_section == (16, 24, 24) and cfg.text.rope_theta == 1e6 and cfg.vision.window_size == 112
    abstract = nnx.eval_shape(lambda: qwen2_5_vl.Qwen2_5_VL(cfg, "bfloat16"))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_json_file(os.path.join(CONFIGS, name + ".json")))
    assert ours == sum(p.numel() for p in hf.parameters())
    if size == "3b":
        assert 3.70e9 < ours < 3.80e9, ours   # published as 3.75B
    else:
        assert 8.2e9 < ours < 8.35e9, ours    # published as 8.29B


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="/no/such/dir"):
        qwen2_5_vl.load_hf("/no/such/dir")


def test_other_architecture(tmp_path):
    json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, open(tmp_path / "config.json", "w"))
    with pytest.raises(ConfigError, match=f"{tmp_path}/config.json.*model_type='llama'"):
        qwen2_5_vl.load_hf(str(tmp_path))


def test_truncated_safetensors_names_file_and_key(hf_pair, tmp_path):
    _, path, _ = hf_pair
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*keys \['"):
        qwen2_5_vl.load_hf(str(tmp_path))


def test_shape_mismatch_names_file_and_key(hf_pair, tmp_path):
    _, path, _ = hf_pair
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["text_config"]["intermediate_size"] += 8
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape"):
        qwen2_5_vl.load_hf(str(tmp_path))


def test_missing_key_is_named(hf_pair, tmp_path):
    _, path, _ = hf_pair
    tensors = read_dir_tensors(path)
    del tensors["visual.merger.ln_q.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(path, "config.json"), tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="visual.merger.ln_q.weight"):
        qwen2_5_vl.load_hf(str(tmp_path))


def test_convert_cli_reports_bad_input(tmp_path, capsys):
    from jaxr1.convert import main
    assert main(["from-hf", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["to-hf", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not a jaxr1 checkpoint" in capsys.readouterr().err
