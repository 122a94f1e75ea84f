"""Loading a model: where a `model.path` is, the model in it with its processors, and the held-out batches.
Train, eval, sft and the dry run all load through here; none of those commands imports another.

A `model.path` may be: "tiny" / "tiny-random" / "tiny-qwen2-vl" / "tiny-qwen3-vl" (the embedded checkpoints), an HF directory, a jaxr1 model
checkpoint, a run directory or one of its training checkpoints (`RUN/checkpoints/STEP`), or a hub name
(`Qwen/Qwen2.5-VL-3B-Instruct`), resolved the way transformers does: the HF cache first, a download when
there is network and HF_HUB_OFFLINE is not set.
"""
from __future__ import annotations

import dataclasses
import os
import re

from flax import nnx

from jaxr1 import run_dir
from jaxr1.assets import TINY_FAMILY_DIRS, TINY_MODEL_DIR, TINY_SFT_MODEL_DIR
from jaxr1.checkpointing import (CheckpointError, abstract_model, is_model_checkpoint, load_model,
                                 restore_params)
from jaxr1.data import build_dataset, load_processors
from jaxr1.errors import UserError
from jaxr1.models import load_hf, set_attention
from jaxr1.models.lora import LoRAParam, add_lora, merge_adapters

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelPathError(UserError):
    pass


def resolve_model_dir(path: str) -> str:
    """A local directory for `path`, or a one-line ModelPathError saying what to give instead."""
    if path in TINY_FAMILY_DIRS:
        return TINY_FAMILY_DIRS[path]
    if path == "tiny":
        return TINY_SFT_MODEL_DIR if os.path.isdir(TINY_SFT_MODEL_DIR) else TINY_MODEL_DIR
    if path == "tiny-random":
        return TINY_MODEL_DIR
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return run_model_dir(local) if run_dir.is_run_dir(local) else local
    if os.path.exists(local):
        raise ModelPathError(f"model path {path!r} is a file; give a directory with config.json")
    if _HUB_NAME.fullmatch(path) and not path.startswith((".", "~")):
        return hub_snapshot(path)
    raise ModelPathError(f"model path {path!r}: no such directory (give an HF model directory, a jaxr1 "
                         f"checkpoint or run directory, a hub name such as Qwen/Qwen2.5-VL-3B-Instruct, or 'tiny')")


def hub_snapshot(repo_id: str) -> str:
    """The cached snapshot of a hub model, downloading it only when the cache lacks it and we may go online."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    where = f"not in the HF cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise ModelPathError(f"model path {repo_id!r}: {where} and HF_HUB_OFFLINE is set; download it on a "
                             f"machine with network (huggingface-cli download {repo_id}) or give a local directory")
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja",
                                                          "*.model", "*.tiktoken"])
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: all the user's to fix
        raise ModelPathError(f"model path {repo_id!r}: {where} and the download failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); give a local directory") from None


def run_model_dir(path: str) -> str:
    """A run directory's newest model (jaxr1.run_dir.newest_model_dir), or a ModelPathError."""
    newest = run_dir.newest_model_dir(path)
    if newest is None:
        raise ModelPathError(f"{path}: a run directory with no checkpoint yet (nothing under "
                             f"{run_dir.CHECKPOINTS}/, {run_dir.FINAL}/ or {run_dir.HF}/)")
    return newest


def load_policy(model_cfg, data_cfg=None, *, attention: bool = True):
    """(model, tokenizer, image processor, directory) from any `model.path`; the data config's min/max_pixels,
    when set, override the checkpoint's image processor. attention=False leaves `model.attention` unset (the
    run set-up, jaxr1.setup, chooses it for train and the dry run alike)."""
    model_dir = resolve_model_dir(model_cfg.path)
    model = load_model_dir(model_dir, model_cfg.param_dtype)
    if attention:   # the kernel is chosen (and refused, with the key to change) before any data or compile work
        set_attention(model, model_cfg.attention, dtype=model_cfg.compute_dtype)
    pixels = (data_cfg.min_pixels, data_cfg.max_pixels) if data_cfg is not None else (None, None)
    tokenizer, image_processor = load_processors(run_dir.processor_dir(model_dir), *pixels)
    return model, tokenizer, image_processor, model_dir


def load_model_dir(model_dir: str, dtype: str | None):
    """The model in a resolved directory: a training checkpoint, a jaxr1 model checkpoint or an HF directory."""
    if run_dir.is_train_checkpoint(model_dir) or is_model_checkpoint(model_dir):
        return load_checkpoint(model_dir, dtype)
    return load_hf(model_dir, dtype=dtype or "float32")


def load_checkpoint(path: str, dtype: str | None = None):
    """The model of a jaxr1 checkpoint: a training checkpoint (RUN/checkpoints/STEP) or a model checkpoint
    (anything else is a CheckpointError). dtype: as saved unless given."""
    if run_dir.is_train_checkpoint(path):
        return load_train_checkpoint(path, dtype)
    return load_model(path, dtype)


def load_train_checkpoint(step_dir: str, dtype: str | None = None):
    """The policy of a training checkpoint (RUN/checkpoints/STEP): its parameters only (the optimizer state is
    not read), with the model config from RUN/model_files/."""
    step_dir = os.path.abspath(step_dir)
    run = run_dir.run_of_checkpoint(step_dir)
    files = os.path.join(run, run_dir.MODEL_FILES)
    if not os.path.isfile(os.path.join(files, "config.json")):
        raise CheckpointError(f"{step_dir}: a training checkpoint without its run's {run_dir.MODEL_FILES}/config.json "
                              f"(expected at {files}); it was written by an older jaxr1: export it from the same "
                              f"run directory's {run_dir.FINAL}/ instead")
    lora = run_dir.lora_of(run)
    if lora:
        # A LoRA run checkpoints its adapters only: the base is the run's model.path, loaded again.
        base = load_model_dir(resolve_model_dir(lora["base"]), dtype)
        model = add_lora(base, rank=lora["rank"], alpha=lora["alpha"], target=lora["target"])
        abstract = nnx.state(model, LoRAParam)
    else:
        model = abstract_model(files, dtype)
        abstract = nnx.state(model, nnx.Param)
    nnx.update(model, restore_params(step_dir, abstract))
    return merge_adapters(model) if lora else model


def build_eval_batches(cfg, tokenizer, image_processor, data_cfg=None) -> list:
    """The held-out PromptBatches: data_cfg, else the run's eval split (data.eval_path or unseen synthetic scenes)."""
    data_cfg = data_cfg or cfg.data.for_eval()
    if data_cfg is None:
        return []
    data_cfg = dataclasses.replace(data_cfg, shuffle=False, num_epochs=1, batch_size=cfg.eval.batch_size)
    return list(build_dataset(data_cfg, tokenizer, image_processor))
