"""HF safetensors <-> jaxr1 parameters for Qwen2-VL: the Qwen2.5-VL machinery (`qwen2_5_vl.params`) with
this family's vision rows; the text rows, key layouts (hub `model.layers.*` / `visual.*` and 5.x in-memory
`model.language_model.*` / `model.visual.*`), sharding and error reporting are shared."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxr1.models.qwen2_5_vl import params as _base
from jaxr1.models.qwen2_vl.config import ModelConfig
from jaxr1.models.qwen2_vl.model import Qwen2_VL

# (our parameter path, HF key with {i} for the layer index, transform); see qwen2_5_vl.params.
_VISION = [
    ("visual.patch_embed", "visual.patch_embed.proj.weight", "conv"),
    ("visual.blocks.norm1", "visual.blocks.{i}.norm1.weight", "copy"),
    ("visual.blocks.norm1_bias", "visual.blocks.{i}.norm1.bias", "copy"),
    ("visual.blocks.norm2", "visual.blocks.{i}.norm2.weight", "copy"),
    ("visual.blocks.norm2_bias", "visual.blocks.{i}.norm2.bias", "copy"),
    ("visual.blocks.qkv_kernel", "visual.blocks.{i}.attn.qkv.weight", "linear"),
    ("visual.blocks.qkv_bias", "visual.blocks.{i}.attn.qkv.bias", "copy"),
    ("visual.blocks.proj_kernel", "visual.blocks.{i}.attn.proj.weight", "linear"),
    ("visual.blocks.proj_bias", "visual.blocks.{i}.attn.proj.bias", "copy"),
    ("visual.blocks.up_kernel", "visual.blocks.{i}.mlp.fc1.weight", "linear"),
    ("visual.blocks.up_bias", "visual.blocks.{i}.mlp.fc1.bias", "copy"),
    ("visual.blocks.down_kernel", "visual.blocks.{i}.mlp.fc2.weight", "linear"),
    ("visual.blocks.down_bias", "visual.blocks.{i}.mlp.fc2.bias", "copy"),
    ("visual.merger.ln_q", "visual.merger.ln_q.weight", "copy"),
    ("visual.merger.ln_q_bias", "visual.merger.ln_q.bias", "copy"),
    ("visual.merger.fc1_kernel", "visual.merger.mlp.0.weight", "linear"),
    ("visual.merger.fc1_bias", "visual.merger.mlp.0.bias", "copy"),
    ("visual.merger.fc2_kernel", "visual.merger.mlp.2.weight", "linear"),
    ("visual.merger.fc2_bias", "visual.merger.mlp.2.bias", "copy"),
]


def weight_table(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    return _VISION + _base.text_weight_table(cfg)


def load_hf(hf_dir: str, dtype: str | jnp.dtype = "float32") -> Qwen2_VL:
    """Load an HF Qwen2-VL directory into a jaxr1 model in `dtype` (float32 or bfloat16)."""
    return _base.load_hf_family(hf_dir, dtype, ModelConfig, Qwen2_VL, weight_table)


def hf_state_dict(model: Qwen2_VL) -> dict[str, np.ndarray]:
    """Hub-layout tensors (numpy, the model's dtype), one entry per HF key."""
    return _base.hf_state_dict(model, weight_table)


def save_hf(model: Qwen2_VL, out_dir: str, *, source_dir: str | None = None,
            max_shard_bytes: int = 4 * 1024**3) -> None:
    """Write config.json + safetensors in the hub layout that every transformers version loads; copy
    tokenizer / image-processor files from source_dir when given."""
    _base.save_hf(model, out_dir, source_dir=source_dir, max_shard_bytes=max_shard_bytes, table_fn=weight_table)
