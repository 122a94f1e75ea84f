"""Set-up shared by train, eval, sft and the dry run: where a model is, loading it with its processors, the
held-out batches, EOS ids. None of those commands imports another; they all import this.

A `model.path` may be: "tiny" / "tiny-random" / "tiny-qwen2-vl" / "tiny-qwen3-vl" (the embedded checkpoints), an HF directory, a jaxr1 model
checkpoint, a run directory or one of its training checkpoints (`RUN/checkpoints/STEP`), or a hub name
(`Qwen/Qwen2.5-VL-3B-Instruct`), resolved the way transformers does: the HF cache first, a download when
there is network and HF_HUB_OFFLINE is not set.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from jaxr1.errors import UserError

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
RUN_CONFIG = "config.yaml"        # written by the trainer into each run directory
RUN_MODEL_FILES = "model_files"   # the run's model config.json + tokenizer/processor files (for checkpoints/N)
TRAIN_CHECKPOINTS = "checkpoints"


class ModelPathError(UserError):
    pass


def resolve_model_dir(path: str) -> str:
    """A local directory for `path`, or a one-line ModelPathError saying what to give instead."""
    from jaxr1.assets import TINY_FAMILY_DIRS, TINY_MODEL_DIR, TINY_SFT_MODEL_DIR
    if path in TINY_FAMILY_DIRS:
        return TINY_FAMILY_DIRS[path]
    if path == "tiny":
        return TINY_SFT_MODEL_DIR if os.path.isdir(TINY_SFT_MODEL_DIR) else TINY_MODEL_DIR
    if path == "tiny-random":
        return TINY_MODEL_DIR
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return run_model_dir(local) if is_run_dir(local) else local
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


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def run_model_dir(run_dir: str) -> str:
    """A run directory's newest model: its newest training checkpoint, else its final checkpoint or HF export."""
    steps = train_checkpoint_steps(run_dir)
    if steps:
        return os.path.join(run_dir, TRAIN_CHECKPOINTS, str(steps[-1]))
    for name in ("checkpoint", "hf"):
        if os.path.isfile(os.path.join(run_dir, name, "config.json")):
            return os.path.join(run_dir, name)
    raise ModelPathError(f"{run_dir}: a run directory with no checkpoint yet (nothing under {TRAIN_CHECKPOINTS}/, "
                         f"checkpoint/ or hf/)")


def train_checkpoint_steps(run_dir: str) -> list[int]:
    d = os.path.join(run_dir, TRAIN_CHECKPOINTS)
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n, "state")))


def run_dir_of(model_dir: str) -> str | None:
    """The run directory a model directory belongs to (itself, RUN/hf, RUN/checkpoint, RUN/checkpoints/N)."""
    d = os.path.abspath(model_dir)
    for cand in (d, os.path.dirname(d), os.path.dirname(os.path.dirname(d))):
        if os.path.isfile(os.path.join(cand, RUN_CONFIG)):
            return cand
    return None


def processor_dir(model_dir: str) -> str:
    """Where the tokenizer and image processor of a model directory are (a training checkpoint keeps them in
    its run's model_files/)."""
    from jaxr1.checkpointing import is_train_checkpoint
    if is_train_checkpoint(model_dir):
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_dir))), RUN_MODEL_FILES)
    return model_dir


def load_policy(model_cfg, data_cfg=None):
    """(model, tokenizer, image processor, directory) from any `model.path`; the data config's min/max_pixels,
    when set, override the checkpoint's image processor."""
    from jaxr1.data import load_processors
    from jaxr1.models import set_attention
    model_dir = resolve_model_dir(model_cfg.path)
    model = load_model_dir(model_dir, model_cfg.param_dtype)
    # The kernel is chosen (and refused, with the key to change) before any data or compile work.
    set_attention(model, model_cfg.attention, dtype=model_cfg.compute_dtype)
    pixels = (data_cfg.min_pixels, data_cfg.max_pixels) if data_cfg is not None else (None, None)
    tokenizer, image_processor = load_processors(processor_dir(model_dir), *pixels)
    return model, tokenizer, image_processor, model_dir


def load_model_dir(model_dir: str, dtype: str | None):
    """The model in a resolved directory: a training checkpoint, a jaxr1 model checkpoint or an HF directory."""
    from jaxr1.checkpointing import is_model_checkpoint, is_train_checkpoint, load_model, load_train_checkpoint
    from jaxr1.models import load_hf
    if is_train_checkpoint(model_dir):
        return load_train_checkpoint(model_dir, dtype=dtype)
    if is_model_checkpoint(model_dir):
        return load_model(model_dir, dtype=dtype)
    return load_hf(model_dir, dtype=dtype or "float32")


def build_eval_batches(cfg, tokenizer, image_processor, data_cfg=None) -> list:
    """The held-out PromptBatches: data_cfg, else the run's eval split (data.eval_path or unseen synthetic scenes)."""
    from jaxr1.data import build_dataset
    data_cfg = data_cfg or cfg.data.for_eval()
    if data_cfg is None:
        return []
    data_cfg = dataclasses.replace(data_cfg, shuffle=False, num_epochs=1, batch_size=cfg.eval.batch_size)
    return list(build_dataset(data_cfg, tokenizer, image_processor))


def eos_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
           tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    return tuple(sorted(i for i in ids if isinstance(i, int) and i >= 0))


def decode_completions(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return tokenizer.batch_decode([t[:n] for t, n in zip(np.asarray(tokens), np.asarray(lengths))],
                                  skip_special_tokens=True)


def reward_specs(rewards_cfg, only: tuple[str, ...] | None = None) -> list[tuple[str, float, dict]]:
    """(name, weight, kwargs) for the scorer; the verifier's numeric policy goes to `accuracy` and `mcq` unless
    their kwargs set their own. `only=("accuracy",)` gives held-out accuracy (always the verifier's, weight 1)."""
    specs = [(r.name, r.weight, dict(r.kwargs)) for r in rewards_cfg.functions] if only is None else \
        [(name, 1.0, {}) for name in only]
    policy = {"numeric_match": rewards_cfg.numeric_match, "min_sig_digits": rewards_cfg.min_sig_digits}
    return [(n, w, {**policy, **kw} if n in ("accuracy", "mcq") else kw) for n, w, kw in specs]
