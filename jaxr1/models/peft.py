"""PEFT LoRA adapter directories in and out: `adapter_config.json` + `adapter_model.safetensors`.

Key names are PEFT's over transformers' module names (`base_model.model.model.language_model.layers.3.
self_attn.q_proj.lora_A.weight`, A as [r, in], B as [out, r]), derived from each family's HF weight table,
so `peft.PeftModel.from_pretrained(base, dir)` loads what jaxr1 trained and `load_peft_adapter` reads adapters
PEFT wrote. `target_modules` is a regex of exactly the adapted modules (a name list would also catch the
vision tower's same-named MLP projections).
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxr1.errors import UserError
from jaxr1.models import lora, weight_table

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _runtime_module(hub_key: str) -> str:
    """transformers 5.x module names: the hub layout's model.layers.* / visual.* under model.language_model /
    model.visual (the inverse of the families' canonical_key)."""
    name = hub_key[:-len(".weight")]
    if name.startswith("model.layers."):
        return "model.language_model." + name[len("model."):]
    if name.startswith("visual."):
        return "model." + name
    return name


def _modules(config) -> dict[str, str]:
    """Our kernel path (language_model/layers/q_kernel) -> module template with {i} (transformers 5 names)."""
    return {path.replace(".", "/"): _runtime_module(key) for path, key, transform in weight_table(config)
            if transform == "linear" and key.endswith(".weight") and "{i}" in key}


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def save_peft_adapter(model, out_dir: str, *, base_model: str | None = None) -> None:
    """Write `model`'s adapters (jaxr1.models.lora) as a PEFT LoRA adapter directory (float32 tensors)."""
    modules = _modules(model.config)
    tensors, patterns, rank, alpha = {}, [], None, None
    for path, kernel in lora.adapters(model).items():
        a, b = (np.asarray(jax.device_get(x), np.float32) for x in (kernel.a, kernel.b))
        rank, alpha = a.shape[-1], kernel.scale * a.shape[-1]
        template = modules[path]
        patterns.append(re.escape(template).replace(re.escape("{i}"), r"\d+"))
        for i in range(a.shape[0]):
            name = _PREFIX + template.format(i=i)
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    if not tensors:
        raise UserError("the model has no LoRA adapters to export")
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "r": int(rank),
              "lora_alpha": float(alpha), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "target_modules": "(" + "|".join(sorted(patterns)) + ")", "modules_to_save": None,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True}
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as f:
        json.dump(config, f, indent=2)


def load_peft_adapter(model, adapter_dir: str):
    """A copy of `model` with the PEFT LoRA adapter of `adapter_dir` on it (jaxr1.models.lora layout)."""
    with open(os.path.join(adapter_dir, ADAPTER_CONFIG)) as f:
        config = json.load(f)
    where = os.path.join(adapter_dir, ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise UserError(f"{where}: peft_type {config.get('peft_type')!r}; only LORA adapters merge")
    unsupported = {k: config.get(k) for k in ("use_rslora", "use_dora") if config.get(k)}
    if config.get("bias", "none") != "none" or config.get("modules_to_save") or unsupported:
        raise UserError(f"{where}: bias / modules_to_save / rslora / dora adapters are not supported "
                        f"(bias={config.get('bias')!r}, modules_to_save={config.get('modules_to_save')}, {unsupported})")
    if config.get("fan_in_fan_out"):
        raise UserError(f"{where}: fan_in_fan_out adapters are not supported")
    tensors = load_file(os.path.join(adapter_dir, ADAPTER_WEIGHTS))
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    matchers = [(path, re.compile(re.escape(_PREFIX + t).replace(re.escape("{i}"), r"(\d+)") +
                                  r"\.lora_(A|B)(?:\.default)?\.weight"))
                for path, t in _modules(model.config).items()]
    for key, value in tensors.items():
        for path, m in matchers:
            if hit := m.fullmatch(key):
                found.setdefault(path, {}).setdefault(int(hit.group(1)), {})[hit.group(2)] = value
                break
        else:
            raise UserError(f"{os.path.join(adapter_dir, ADAPTER_WEIGHTS)}: key {key!r} names no adapted kernel of "
                            f"this {type(model).__name__} model (is it the adapter's base model?)")
    target = "^(" + "|".join(re.escape(p) for p in found) + ")$"
    out = lora.add_lora(model, rank=r, alpha=alpha, target=target)
    kernels = lora.adapters(out)
    for path, layers in found.items():
        n = kernels[path].shape[0]
        if sorted(layers) != list(range(n)) or any(set(v) != {"A", "B"} for v in layers.values()):
            raise UserError(f"{where}: {path} has adapters for layers {sorted(layers)}, expected 0..{n - 1} (A and B)")
        module = out
        for name in path.split("/")[:-1]:
            module = getattr(module, name)
        name = path.split("/")[-1]
        for part, key in (("A", "a"), ("B", "b")):
            var = getattr(module, f"{name}_lora_{key}")
            value = np.stack([layers[i][part].T for i in range(n)])
            if value.shape != var.shape:
                raise UserError(f"{where}: {path} lora_{part} is {value.shape[1:]} per layer, the model needs "
                                f"{var.shape[1:]} (r={r}; is it the adapter's base model?)")
            var[...] = jnp.asarray(value, var.dtype)
    return out
