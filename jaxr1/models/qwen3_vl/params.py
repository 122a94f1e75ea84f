"""HF safetensors <-> jaxr1 Qwen3-VL parameters, through one table of (our path, HF key, transform) used both
ways, with Qwen2.5-VL's machinery (transforms, safe reads, error messages, the sharded writer).

Keys are those of transformers' Qwen3VLForConditionalGeneration (`model.visual.*`, `model.language_model.*`,
`lm_head.weight`): what `save_pretrained` writes and what the released checkpoints hold (Qwen3-VL has no
checkpoint conversion mapping). Loading is Qwen2.5-VL's `load_hf_family` with keys taken as stored (its
default folds `model.language_model.*` onto `model.*`, the opposite of this layout); tensors are placed one
at a time.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxr1.models.qwen2_5_vl import params as _base
from jaxr1.models.qwen3_vl.config import ModelConfig
from jaxr1.models.qwen3_vl.model import Qwen3VL

V, T = "model.visual.", "model.language_model."
# transforms: "linear" = HF [out, in] <-> our [in, out]; "copy"; "conv" = Conv3d [E, C, T, P, P] <-> [C*T*P*P, E]
_BLOCK = [("norm1_scale", "norm1.weight", "copy"), ("norm1_bias", "norm1.bias", "copy"),
          ("norm2_scale", "norm2.weight", "copy"), ("norm2_bias", "norm2.bias", "copy"),
          ("qkv_kernel", "attn.qkv.weight", "linear"), ("qkv_bias", "attn.qkv.bias", "copy"),
          ("proj_kernel", "attn.proj.weight", "linear"), ("proj_bias", "attn.proj.bias", "copy"),
          ("fc1_kernel", "mlp.linear_fc1.weight", "linear"), ("fc1_bias", "mlp.linear_fc1.bias", "copy"),
          ("fc2_kernel", "mlp.linear_fc2.weight", "linear"), ("fc2_bias", "mlp.linear_fc2.bias", "copy")]
_MERGER = [("norm_scale", "norm.weight", "copy"), ("norm_bias", "norm.bias", "copy"),
           ("fc1_kernel", "linear_fc1.weight", "linear"), ("fc1_bias", "linear_fc1.bias", "copy"),
           ("fc2_kernel", "linear_fc2.weight", "linear"), ("fc2_bias", "linear_fc2.bias", "copy")]
_LAYER = [("input_norm", "input_layernorm.weight", "copy"),
          ("post_attention_norm", "post_attention_layernorm.weight", "copy"),
          ("q_kernel", "self_attn.q_proj.weight", "linear"), ("k_kernel", "self_attn.k_proj.weight", "linear"),
          ("v_kernel", "self_attn.v_proj.weight", "linear"), ("o_kernel", "self_attn.o_proj.weight", "linear"),
          ("q_norm", "self_attn.q_norm.weight", "copy"), ("k_norm", "self_attn.k_norm.weight", "copy"),
          ("gate_kernel", "mlp.gate_proj.weight", "linear"), ("up_kernel", "mlp.up_proj.weight", "linear"),
          ("down_kernel", "mlp.down_proj.weight", "linear")]


def weight_table(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(our parameter path, HF key with {i} for the stacked index, transform)."""
    table = [("visual.patch_embed", V + "patch_embed.proj.weight", "conv"),
             ("visual.patch_bias", V + "patch_embed.proj.bias", "copy"),
             ("visual.pos_embed", V + "pos_embed.weight", "copy")]
    table += [(f"visual.blocks.{ours}", V + "blocks.{i}." + hf, tr) for ours, hf, tr in _BLOCK]
    table += [(f"visual.merger.{ours}", V + "merger." + hf, tr) for ours, hf, tr in _MERGER]
    if cfg.vision.deepstack_visual_indexes:
        table += [(f"visual.deepstack.{ours}", V + "deepstack_merger_list.{i}." + hf, tr) for ours, hf, tr in _MERGER]
    table += [("language_model.embed", T + "embed_tokens.weight", "copy")]
    table += [(f"language_model.layers.{ours}", T + "layers.{i}." + hf, tr) for ours, hf, tr in _LAYER]
    table += [("language_model.norm", T + "norm.weight", "copy")]
    return table + ([] if cfg.tie_word_embeddings else [("language_model.lm_head", "lm_head.weight", "linear")])


def load_hf(hf_dir: str, dtype: str | jnp.dtype = "float32") -> Qwen3VL:
    """Load an HF Qwen3-VL (dense) directory into a jaxr1 model in `dtype` (float32 or bfloat16)."""
    return _base.load_hf_family(hf_dir, dtype, ModelConfig, Qwen3VL, weight_table, key_fn=_stored_key)


def _stored_key(key: str) -> str:
    """Keys are read as stored: this family's table is in transformers' own layout."""
    return key


def hf_state_dict(model: Qwen3VL) -> dict[str, np.ndarray]:
    """HF-layout tensors (numpy, the model's dtype), one entry per HF key."""
    return _base.hf_state_dict(model, weight_table)


def save_hf(model: Qwen3VL, out_dir: str, *, source_dir: str | None = None,
            max_shard_bytes: int = 4 * 1024**3) -> None:
    """Write config.json + safetensors (sharded above max_shard_bytes) that transformers loads; copy
    tokenizer / image-processor files from source_dir when given."""
    _base.save_hf(model, out_dir, source_dir=source_dir, max_shard_bytes=max_shard_bytes, table_fn=weight_table)
