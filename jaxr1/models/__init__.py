"""Model implementations (pure: no training imports). `load_hf(dir)` picks the family by config.json's model_type."""
from __future__ import annotations

import importlib
import json
import os

from jaxr1.errors import UserError

# model_type -> the family's module (each offers load_hf / save_hf / ModelConfig).
FAMILIES = {"qwen2_5_vl": "jaxr1.models.qwen2_5_vl"}


def model_type(model_dir: str) -> str:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{model_dir}: no config.json (not an HF model directory)")
    with open(path) as f:
        return json.load(f).get("model_type", "")


def family(name: str):
    if name not in FAMILIES:
        raise UserError(f"model_type {name!r} is not supported; supported: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


def load_hf(model_dir: str, dtype: str = "float32"):
    """Any supported family from an HF directory (safetensors, single or sharded; transformers 4.x or 5.x)."""
    return family(model_type(model_dir) or "qwen2_5_vl").load_hf(model_dir, dtype=dtype)
