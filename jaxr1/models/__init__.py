"""Model implementations (pure: no training imports), one folder per family, chosen by config.json's model_type.

A family module offers `ModelConfig` (`from_hf_dir`, `to_hf_dict`), its model class (FAMILIES names it),
`load_hf(dir, dtype)` and `save_hf(model, out_dir, source_dir=None)`. Code outside models/ reaches a family
only through the functions here; what families share sits beside this file, not in one family's folder:
`inputs` (ModelInputs, image buckets, the one prompt -> model-inputs conversion), `vlm` (the model base),
`cache` (KVCache), `hf_files` (tokenizer files, CheckpointError).
"""
from __future__ import annotations

import importlib
import json
import os

import logging

import jax
import jax.numpy as jnp

from jaxr1.errors import UserError
from jaxr1.ops.attention import cudnn_head_dim_ok, resolve_attention, splash_head_dim_ok

# model_type -> (module, model class)
FAMILIES = {
    "qwen2_5_vl": ("jaxr1.models.qwen2_5_vl", "Qwen2_5_VL"),
    "qwen2_vl": ("jaxr1.models.qwen2_vl", "Qwen2_VL"),
    "qwen3_vl": ("jaxr1.models.qwen3_vl", "Qwen3VL"),
}


def model_type(model_dir: str) -> str:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{model_dir}: no config.json (not an HF model directory)")
    with open(path) as f:
        return json.load(f).get("model_type") or "qwen2_5_vl"


def family(name: str):
    if name not in FAMILIES:
        raise UserError(f"model_type {name!r} is not supported; supported: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name][0])


def family_of(config):
    """The family module whose ModelConfig `config` is (a model's `.config`)."""
    for name in FAMILIES:
        module = family(name)
        if type(config) is module.ModelConfig:
            return module
    raise TypeError(f"{type(config).__qualname__} is no registered family's ModelConfig")


def config_from_dir(model_dir: str):
    return family(model_type(model_dir)).ModelConfig.from_hf_dir(model_dir)


def build(config, dtype="float32", rngs=None):
    """A model of `config`'s family (call under nnx.eval_shape for shapes only)."""
    module = family_of(config)
    name = next(n for n, (m, _) in FAMILIES.items() if m == module.__name__)
    return getattr(module, FAMILIES[name][1])(config, jnp.dtype(dtype), rngs)


def load_hf(model_dir: str, dtype: str = "float32"):
    """Any supported family from an HF directory (safetensors, single or sharded; transformers 4.x or 5.x)."""
    return family(model_type(model_dir)).load_hf(model_dir, dtype=dtype)


def save_hf(model, out_dir: str, *, source_dir: str | None = None) -> None:
    """An HF directory of the model's family that transformers' from_pretrained loads."""
    family_of(model.config).save_hf(model, out_dir, source_dir=source_dir)


def weight_table(config) -> list[tuple[str, str, str]]:
    """The family's (our dotted path, HF hub key with {i}, transform) rows (its HF I/O table)."""
    return importlib.import_module(family_of(config).__name__ + ".params").weight_table(config)


def set_attention(model, name: str, *, platform: str | None = None, dtype=None,
                  allow_interpret: bool = False) -> dict[str, str]:
    """Resolve `model.attention` (auto | xla | splash | cudnn) for `platform` (default: JAX's backend) and the
    compute dtype, and set it on the text decoder (training, prefill) and the vision tower. A kernel that
    cannot serve the text decoder is a UserError here, at start. The vision tower runs splash when the text
    does and its head dim allows; cudnn when the text does, its head dim allows and it has window layers
    (Qwen2.5-VL: the windows as blocks, one contiguous run per row, what cuDNN's wrapper serves; its full
    layers, whose slots may hold several frames, run XLA); else XLA. The sampler's decode step keeps its own
    shared-prefix attention (one query per row over the prompt and own caches; no fused kernel serves that
    shape better). Returns {"text": ..., "vision": ..., "decode": "shared_prefix"}."""
    platform = platform or jax.default_backend()
    dtype = jnp.dtype(dtype or model.dtype)
    cfg = model.config
    text = resolve_attention(name, platform=platform, dtype=dtype, head_dim=cfg.text.head_dim,
                             allow_interpret=allow_interpret)
    windows = getattr(cfg.vision, "window_size", None) is not None and len(
        set(getattr(cfg.vision, "fullatt_block_indexes", ())) & set(range(cfg.vision.depth))) < cfg.vision.depth
    vision = text if (text == "splash" and splash_head_dim_ok(cfg.vision.head_dim) or
                      text == "cudnn" and windows and cudnn_head_dim_ok(cfg.vision.head_dim)) else "xla"
    model.language_model.attention = text
    model.visual.attention = vision
    chosen = {"text": text, "vision": vision, "decode": "shared_prefix"}
    logging.getLogger("jaxr1.models").info("attention (model.attention=%s on %s, %s): %s", name, platform,
                                           dtype.name, chosen)
    return chosen
