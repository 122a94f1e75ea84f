"""LoRA adapters on the stacked layer kernels: W -> W + (alpha / r) A B, PEFT's parameterisation and init.

An adapted kernel `<name>` [L, in, out] of a decoder-layer or vision-block module gets two `LoRAParam`s beside
it, `<name>_lora_a` [L, in, r] (PEFT's kaiming-uniform init) and `<name>_lora_b` [L, r, out] (zeros), and the
module a static `lora_scale`. `stacked_weights(module)` hands the layer scan a `LoraKernel` for each adapted
kernel: `x @ kernel` is x W + scale (x A) B, unmerged, so no merged copy of W is built (or saved for the
backward) and the base weights need no gradient. Merging (`merge_adapters`) is for export.
Training imports nothing from here but the model functions; the learner splits on `LoRAParam`.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxr1.errors import UserError

# PEFT's usual "all linear layers of the LLM": attention and MLP projections of every decoder layer.
DEFAULT_TARGET = r"language_model/layers/(q|k|v|o|gate|up|down)_kernel$"
# Kernels the layer scans consume through stacked_weights (the only place an adapter is applied).
ADAPTABLE = re.compile(r"^(language_model/layers|visual/blocks)/\w+_kernel$")


# flax's own adapter variable type (an nnx.Param): what a LoRA run trains; the optimizer and checkpoints hold
# these only.
LoRAParam = nnx.LoRAParam


@jax.tree_util.register_pytree_node_class
class LoraKernel:
    """A kernel W [..., in, out] with its adapter: `x @ k` = x W + scale (x A) B. Indexing slices the layer axis."""

    def __init__(self, w, a, b, scale: float):
        self.w, self.a, self.b, self.scale = w, a, b, scale

    def tree_flatten(self):
        return (self.w, self.a, self.b), self.scale

    @classmethod
    def tree_unflatten(cls, scale, leaves):
        return cls(*leaves, scale)

    def __rmatmul__(self, x):
        return x @ self.w + (self.scale * (x @ self.a).astype(x.dtype)) @ self.b

    def __getitem__(self, i):
        return LoraKernel(self.w[i], self.a[i], self.b[i], self.scale)

    @property
    def shape(self):
        return self.w.shape

    @property
    def dtype(self):
        return self.w.dtype

    def merged(self) -> jax.Array:
        """W + scale A B, computed in float32, in W's dtype."""
        delta = jnp.einsum("...ir,...ro->...io", self.a.astype(jnp.float32), self.b.astype(jnp.float32))
        return (self.w.astype(jnp.float32) + self.scale * delta).astype(self.w.dtype)


def stacked_weights(module: nnx.Module) -> dict:
    """A module's nnx.Param values by attribute name (the stacked weights a layer scan runs over); an adapted
    kernel comes as a LoraKernel and its adapter matrices are not listed on their own."""
    params = {k: v[...] for k, v in vars(module).items() if isinstance(v, nnx.Param)}
    scale = getattr(module, "lora_scale", None)
    if scale is None:
        return params
    out = {}
    for k, v in params.items():
        if k.endswith(("_lora_a", "_lora_b")):
            continue
        out[k] = LoraKernel(v, params[f"{k}_lora_a"], params[f"{k}_lora_b"], scale) if f"{k}_lora_a" in params else v
    return out


def _modules(model):
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            yield "/".join(str(p) for p in path), node


def _copy(model):
    """A new module tree over the same arrays (attributes can be added or removed without touching `model`)."""
    return nnx.merge(*nnx.split(model))


def adapters(model) -> dict[str, "LoraKernel"]:
    """{kernel path (e.g. language_model/layers/q_kernel): its LoraKernel (W, A, B, scale)} of every adapted
    kernel."""
    return {f"{where}/{name}": k for where, module in _modules(model)
            for name, k in stacked_weights(module).items() if isinstance(k, LoraKernel)}


def adapted_paths(model) -> list[str]:
    """Paths of the kernels that carry an adapter (by name only: works on nnx.eval_shape models too)."""
    return [f"{where}/{k[:-len('_lora_a')]}" for where, m in _modules(model) for k, v in vars(m).items()
            if isinstance(v, LoRAParam) and k.endswith("_lora_a")]


def has_adapters(model) -> bool:
    return bool(adapted_paths(model))


def add_lora(model, *, rank: int, alpha: float, target: str = DEFAULT_TARGET, seed: int = 0,
             dtype=None) -> nnx.Module:
    """A copy of `model` (same arrays) with an adapter on every kernel whose path matches `target` (a regex
    searched in paths like language_model/layers/q_kernel). Works under nnx.eval_shape (the dry run).
    dtype: the adapters' (default: each kernel's)."""
    if rank < 1:
        raise UserError(f"lora.rank={rank}: must be >= 1 (0 turns LoRA off)")
    model = _copy(model)
    pattern = re.compile(target)
    key = jax.random.key(seed)
    matched = []
    for where, module in list(_modules(model)):
        for name, v in list(vars(module).items()):
            path = f"{where}/{name}" if where else name
            if not isinstance(v, nnx.Param) or isinstance(v, LoRAParam) or not pattern.search(path):
                continue
            if not ADAPTABLE.match(path):
                raise UserError(f"lora.target={target!r} matches {path}, which no layer scan runs: adapters go on "
                                f"the kernels under language_model/layers/ and visual/blocks/")
            w = v[...]
            *lead, din, dout = w.shape
            key, sub = jax.random.split(key)
            ad = jnp.dtype(dtype or w.dtype)
            # PEFT: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0 (the adapter starts as 0).
            bound = 1.0 / np.sqrt(din)
            setattr(module, f"{name}_lora_a",
                    LoRAParam(jax.random.uniform(sub, (*lead, din, rank), ad, -bound, bound)))
            setattr(module, f"{name}_lora_b", LoRAParam(jnp.zeros((*lead, rank, dout), ad)))
            module.lora_scale = float(alpha) / rank
            matched.append(path)
    if not matched:
        raise UserError(f"lora.target={target!r} matches no kernel; e.g. {DEFAULT_TARGET!r} (paths look like "
                        f"language_model/layers/q_kernel, visual/blocks/qkv_kernel)")
    return model


def merge_adapters(model) -> nnx.Module:
    """A copy of `model` without adapters, each adapted kernel replaced by W + scale A B (float32 math, the
    kernel's dtype): the plain model export and checkpoints hold."""
    model = _copy(model)
    for _, module in _modules(model):
        kernels = {n: k for n, k in stacked_weights(module).items() if isinstance(k, LoraKernel)}
        for name, kernel in kernels.items():
            setattr(module, name, nnx.Param(kernel.merged()))
            delattr(module, f"{name}_lora_a")
            delattr(module, f"{name}_lora_b")
        if kernels:
            del module.lora_scale
    return model


def adapter_state(model):
    """The adapters of `model` as an nnx.State (what a LoRA run trains and checkpoints)."""
    return nnx.state(model, LoRAParam)
