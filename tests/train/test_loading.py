"""Where a model.path points: hub names through a populated HF cache with no network, run directories."""
import os
import shutil

import pytest

from jaxr1.assets import TINY_MODEL_DIR
from jaxr1.loading import ModelPathError, resolve_model_dir
from jaxr1.run_dir import run_dir_of


def populate_hf_cache(cache, repo_id, src_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/files}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in os.listdir(src_dir):
        shutil.copy(os.path.join(src_dir, name), snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_name_resolves_to_the_cached_snapshot_offline(offline_cache):
    from jaxr1.config import load_config
    from jaxr1.loading import load_policy
    snap = populate_hf_cache(offline_cache, "Qwen/Qwen2.5-VL-3B-Instruct", TINY_MODEL_DIR)
    assert resolve_model_dir("Qwen/Qwen2.5-VL-3B-Instruct") == str(snap)
    cfg = load_config(None, ["model.path=Qwen/Qwen2.5-VL-3B-Instruct"])
    model, tokenizer, _, model_dir = load_policy(cfg.model)
    assert model_dir == str(snap) and tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


def test_uncached_hub_name_offline_is_one_line(offline_cache):
    with pytest.raises(ModelPathError, match="not in the HF cache .* HF_HUB_OFFLINE is set"):
        resolve_model_dir("Qwen/Not-There")


def test_local_paths(tmp_path):
    with pytest.raises(ModelPathError, match="no such directory"):
        resolve_model_dir(str(tmp_path / "missing"))
    with pytest.raises(ModelPathError, match="no such directory"):
        resolve_model_dir("./relative/missing")      # a path, not a hub name
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelPathError, match="is a file"):
        resolve_model_dir(str(tmp_path / "f.txt"))


def test_run_directory_resolves_to_its_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step in (2, 10):
        (run / "checkpoints" / str(step) / "state").mkdir(parents=True)
    (run / "config.yaml").write_text("steps: 10\n")
    assert resolve_model_dir(str(run)) == str(run / "checkpoints" / "10")
    assert run_dir_of(str(run / "checkpoints" / "10")) == str(run)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text("steps: 1\n")
    with pytest.raises(ModelPathError, match="no checkpoint yet"):
        resolve_model_dir(str(empty))
