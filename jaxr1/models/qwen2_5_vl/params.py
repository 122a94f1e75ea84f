"""HF safetensors <-> jaxr1 parameters, through one table of (our path, HF key, transform) used both ways.

Reads transformers 4.x/5.x config.json, single or sharded safetensors, and both key layouts (the hub's
`model.layers.*` / `visual.*` and the `model.language_model.*` / `model.visual.*` layout of some 4.5x saves).
Each tensor is read, cast to the target dtype and placed into its stacked array one at a time, so the host
never holds a second full copy of the model. Writes the hub layout, which every transformers version loads.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxr1.models.hf_files import CheckpointError, copy_tokenizer_files, share_files
from jaxr1.models.qwen2_5_vl.config import ModelConfig
from jaxr1.models.qwen2_5_vl.model import Qwen2_5_VL

# (our parameter path, HF key with {i} for the layer index, transform)
# transforms: "linear" = HF [out, in] <-> our [in, out]; "copy"; "conv" = Conv3d [E, C, T, P, P] <-> [C*T*P*P, E]
_VISION = [
    ("visual.patch_embed", "visual.patch_embed.proj.weight", "conv"),
    ("visual.blocks.norm1", "visual.blocks.{i}.norm1.weight", "copy"),
    ("visual.blocks.norm2", "visual.blocks.{i}.norm2.weight", "copy"),
    ("visual.blocks.qkv_kernel", "visual.blocks.{i}.attn.qkv.weight", "linear"),
    ("visual.blocks.qkv_bias", "visual.blocks.{i}.attn.qkv.bias", "copy"),
    ("visual.blocks.proj_kernel", "visual.blocks.{i}.attn.proj.weight", "linear"),
    ("visual.blocks.proj_bias", "visual.blocks.{i}.attn.proj.bias", "copy"),
    ("visual.blocks.gate_kernel", "visual.blocks.{i}.mlp.gate_proj.weight", "linear"),
    ("visual.blocks.gate_bias", "visual.blocks.{i}.mlp.gate_proj.bias", "copy"),
    ("visual.blocks.up_kernel", "visual.blocks.{i}.mlp.up_proj.weight", "linear"),
    ("visual.blocks.up_bias", "visual.blocks.{i}.mlp.up_proj.bias", "copy"),
    ("visual.blocks.down_kernel", "visual.blocks.{i}.mlp.down_proj.weight", "linear"),
    ("visual.blocks.down_bias", "visual.blocks.{i}.mlp.down_proj.bias", "copy"),
    ("visual.merger.ln_q", "visual.merger.ln_q.weight", "copy"),
    ("visual.merger.fc1_kernel", "visual.merger.mlp.0.weight", "linear"),
    ("visual.merger.fc1_bias", "visual.merger.mlp.0.bias", "copy"),
    ("visual.merger.fc2_kernel", "visual.merger.mlp.2.weight", "linear"),
    ("visual.merger.fc2_bias", "visual.merger.mlp.2.bias", "copy"),
]
_TEXT = [
    ("language_model.embed", "model.embed_tokens.weight", "copy"),
    ("language_model.layers.input_norm", "model.layers.{i}.input_layernorm.weight", "copy"),
    ("language_model.layers.post_attention_norm", "model.layers.{i}.post_attention_layernorm.weight", "copy"),
    ("language_model.layers.q_kernel", "model.layers.{i}.self_attn.q_proj.weight", "linear"),
    ("language_model.layers.q_bias", "model.layers.{i}.self_attn.q_proj.bias", "copy"),
    ("language_model.layers.k_kernel", "model.layers.{i}.self_attn.k_proj.weight", "linear"),
    ("language_model.layers.k_bias", "model.layers.{i}.self_attn.k_proj.bias", "copy"),
    ("language_model.layers.v_kernel", "model.layers.{i}.self_attn.v_proj.weight", "linear"),
    ("language_model.layers.v_bias", "model.layers.{i}.self_attn.v_proj.bias", "copy"),
    ("language_model.layers.o_kernel", "model.layers.{i}.self_attn.o_proj.weight", "linear"),
    ("language_model.layers.gate_kernel", "model.layers.{i}.mlp.gate_proj.weight", "linear"),
    ("language_model.layers.up_kernel", "model.layers.{i}.mlp.up_proj.weight", "linear"),
    ("language_model.layers.down_kernel", "model.layers.{i}.mlp.down_proj.weight", "linear"),
    ("language_model.norm", "model.norm.weight", "copy"),
]
_LM_HEAD = ("language_model.lm_head", "lm_head.weight", "linear")

def text_weight_table(cfg) -> list[tuple[str, str, str]]:
    """The text decoder's rows (and lm_head unless tied); shared by every family using TextDecoder."""
    return _TEXT + ([] if cfg.tie_word_embeddings else [_LM_HEAD])


def weight_table(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    return _VISION + text_weight_table(cfg)


def canonical_key(key: str) -> str:
    """Map the `model.language_model.*` / `model.visual.*` layout onto the hub layout."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def _param(model: nnx.Module, path: str) -> nnx.Param:
    obj = model
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _to_hf(x: np.ndarray, transform: str, hf_shape=None) -> np.ndarray:
    if transform == "linear":
        return x.T
    if transform == "conv":
        return x.T.reshape(hf_shape)
    return x


def _hf_shape(ours: tuple[int, ...], transform: str, cfg: ModelConfig) -> tuple[int, ...]:
    if transform == "linear":
        return tuple(reversed(ours))
    if transform == "conv":
        v = cfg.vision
        return (ours[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return tuple(ours)


def _from_hf(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "linear":
        return x.T
    if transform == "conv":
        return x.reshape(x.shape[0], -1).T
    return x


def _index_safetensors(hf_dir: str, key_fn=canonical_key) -> dict[str, str]:
    """key_fn(key) -> file, from model.safetensors.index.json or the *.safetensors files present."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    files: dict[str, str] = {}
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        for key, fname in weight_map.items():
            files[key_fn(key)] = os.path.join(hf_dir, fname)
        return files
    names = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    if not names:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors files and no model.safetensors.index.json")
    for name in names:
        path = os.path.join(hf_dir, name)
        for key in _open(path).keys():
            files[key_fn(key)] = path
    return files




def _open(path: str):
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})"
                              f"{_truncated_keys(path)}") from None


def _truncated_keys(path: str) -> str:
    """Name the tensors whose bytes lie past the end of a truncated file (read from the raw header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        cut = [k for k, v in header.items() if k != "__metadata__" and 8 + n + v["data_offsets"][1] > size]
    except Exception:
        return ""
    return f"; truncated: keys {cut[:3]}{' ...' if len(cut) > 3 else ''} extend past the end of the file" if cut else ""


def _read(handles: dict, path: str, key: str, raw_keys: dict[str, str]) -> np.ndarray:
    if path not in handles:
        handles[path] = _open(path)
    try:
        return handles[path].get_tensor(raw_keys.get(key, key))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {key!r} ({type(e).__name__}: {e}); "
                              "the file may be truncated") from None


def load_hf(hf_dir: str, dtype: str | jnp.dtype = "float32") -> Qwen2_5_VL:
    """Load an HF Qwen2.5-VL directory into a jaxr1 model in `dtype` (float32 or bfloat16)."""
    return load_hf_family(hf_dir, dtype, ModelConfig, Qwen2_5_VL, weight_table)


def load_hf_family(hf_dir: str, dtype: str | jnp.dtype, config_cls, model_cls, table_fn,
                   key_fn=canonical_key) -> nnx.Module:
    """load_hf for any family: `config_cls.from_hf_dir`, `model_cls(cfg, dtype)` and its `table_fn(cfg)`.
    `key_fn` maps a key as stored onto the table's layout (default: `canonical_key`, the hub layout)."""
    cfg = config_cls.from_hf_dir(hf_dir)
    dtype = jnp.dtype(dtype)
    files = _index_safetensors(hf_dir, key_fn)
    # Remember the key as stored in the file (either layout) for each table key.
    raw_keys: dict[str, str] = {}
    for path in sorted(set(files.values())):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: listed in model.safetensors.index.json but missing")
        for key in _open(path).keys():
            raw_keys[key_fn(key)] = key
    model = nnx.eval_shape(lambda: model_cls(cfg, dtype))
    expected: set[str] = set()
    handles: dict = {}
    for path, template, transform in table_fn(cfg):
        p = _param(model, path)
        shape = tuple(p.shape)
        stacked = "{i}" in template
        keys = [template.format(i=i) for i in range(shape[0])] if stacked else [template]
        expected.update(keys)
        missing = [k for k in keys if k not in files]
        if missing:
            raise CheckpointError(f"{hf_dir}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                                  f"(config {os.path.join(hf_dir, 'config.json')} expects them)")
        out = np.empty(shape, dtype)
        hf_shape = _hf_shape(shape[1:] if stacked else shape, transform, cfg)
        for i, key in enumerate(keys):
            x = _read(handles, files[key], key, raw_keys)
            if tuple(x.shape) != hf_shape:
                raise CheckpointError(f"{files[key]}: {key!r} has shape {tuple(x.shape)}, the config expects "
                                      f"{hf_shape}")
            out[i if stacked else ...] = _from_hf(x, transform)
        p.set_value(jnp.asarray(out))
        del out
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding): ignore it.
    unexpected = sorted(set(files) - expected - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    if unexpected:
        raise CheckpointError(f"{hf_dir}: unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return model


def hf_state_dict(model: Qwen2_5_VL, table_fn=weight_table) -> dict[str, np.ndarray]:
    """Hub-layout tensors (numpy, the model's dtype), one entry per HF key."""
    cfg = model.config
    out = {}
    for path, template, transform in table_fn(cfg):
        value = np.asarray(jax.device_get(_param(model, path)[...]))
        if "{i}" in template:
            for i in range(value.shape[0]):
                hf_shape = _hf_shape(value.shape[1:], transform, cfg)
                out[template.format(i=i)] = np.ascontiguousarray(_to_hf(value[i], transform, hf_shape))
        else:
            out[template] = np.ascontiguousarray(_to_hf(value, transform, _hf_shape(value.shape, transform, cfg)))
    return out


def save_hf(model: Qwen2_5_VL, out_dir: str, *, source_dir: str | None = None,
            max_shard_bytes: int = 4 * 1024**3, table_fn=weight_table) -> None:
    """Write config.json + safetensors (sharded above max_shard_bytes) that transformers loads; copy
    tokenizer / image-processor files from source_dir when given. table_fn: the family's weight table."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = hf_state_dict(model, table_fn)
    dtype_name = {np.dtype(np.float32): "float32"}.get(np.dtype(model.dtype), "bfloat16")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.config.to_hf_dict(dtype_name), f, indent=2)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, x in tensors.items():
        if shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = x
        size += x.nbytes
    for stale in os.listdir(out_dir):
        if stale.endswith(".safetensors") or stale == "model.safetensors.index.json":
            os.remove(os.path.join(out_dir, stale))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for n, shard in enumerate(shards):
            name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(x.nbytes for x in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if source_dir:
        copy_tokenizer_files(source_dir, out_dir)
    share_files(out_dir)
