"""Which parameter dimension goes on which mesh axis: one table of (path regex -> per-dimension axes).

Paths are the model's parameter paths joined with '/', e.g. `language_model/layers/q_kernel` ([L, D, H*hd]).
Layer-stacked weights keep their leading layer axis unsharded. Column-parallel kernels put their output dim on
`tensor` and their input dim on `fsdp`; row-parallel kernels the reverse, so a layer needs one all-reduce.
A dimension that the axis size does not divide is replicated instead (logged); attention heads that the
tensor axis does not divide are an error at start (they would split a head).
"""
from __future__ import annotations

import logging
import re

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxr1.parallel.layout import check_tensor_heads
from jaxr1.parallel.mesh import BATCH_AXES

log = logging.getLogger("jaxr1.parallel")

PARAM_RULES: list[tuple[str, tuple]] = [
    (r"language_model/embed$", ("tensor", "fsdp")),                    # [V, D]
    (r"language_model/lm_head$", ("fsdp", "tensor")),                  # [D, V]
    (r"language_model/layers/[qkv]_kernel$", (None, "fsdp", "tensor")),
    (r"language_model/layers/[qkv]_bias$", (None, "tensor")),
    (r"language_model/layers/o_kernel$", (None, "tensor", "fsdp")),
    (r"language_model/layers/(gate|up)_kernel$", (None, "fsdp", "tensor")),
    (r"language_model/layers/down_kernel$", (None, "tensor", "fsdp")),
    (r"visual/patch_embed$", (None, "fsdp")),
    (r"visual/pos_embed$", (None, "fsdp")),                          # Qwen3-VL's learned grid [N, E]
    (r"visual/blocks/(gate|up|fc1)_kernel$", (None, "fsdp", "tensor")),
    (r"visual/blocks/(gate|up|fc1)_bias$", (None, "tensor")),
    (r"visual/blocks/(down|fc2)_kernel$", (None, "tensor", "fsdp")),
    (r"visual/blocks/(qkv|proj)_kernel$", (None, "fsdp", None)),      # fused qkv: keep heads whole
    (r"visual/merger/fc1_kernel$", ("fsdp", "tensor")),
    (r"visual/merger/fc1_bias$", ("tensor",)),
    (r"visual/merger/fc2_kernel$", ("tensor", "fsdp")),
    (r"visual/deepstack/fc1_kernel$", (None, "fsdp", "tensor")),     # Qwen3-VL's stacked DeepStack mergers
    (r"visual/deepstack/fc1_bias$", (None, "tensor")),
    (r"visual/deepstack/fc2_kernel$", (None, "tensor", "fsdp")),
    (r".*", ()),                                                       # norms, other biases: replicated
]


def _path(keys) -> str:
    """'language_model/layers/q_kernel' for a parameter (nnx.Param's own `.value` attribute key dropped)."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys]
    return "/".join(names[:-1] if names and names[-1] == "value" else names)


def check_heads(model_config, mesh) -> None:
    check_tensor_heads(mesh.shape["tensor"], model_config)


def _axes(path: str, ndim: int, rules) -> list:
    """The rule's per-dimension axes for `path`; a LoRA adapter follows its kernel W [.., in, out]: A [.., in, r]
    keeps W's input-dim axis, B [.., r, out] its output-dim axis, the rank dim is replicated."""
    for suffix, keep in (("_lora_a", -2), ("_lora_b", -1)):
        if path.endswith(suffix):
            base = _axes(path[:-len(suffix)], ndim, rules)
            return [a if i < ndim - 2 or i == ndim + keep else None for i, a in enumerate(base)]
    for pattern, axes in rules:
        if re.search(pattern, path):
            break
    return list(axes) + [None] * (ndim - len(axes))


def spec_for(path: str, shape: tuple[int, ...], mesh, rules=PARAM_RULES) -> P:
    axes = _axes(path, len(shape), rules)
    for i, axis in enumerate(axes):
        if axis is not None and shape[i] % mesh.shape[axis]:
            log.info("%s dim %d (%d) not divisible by %s=%d: replicated", path, i, shape[i], axis, mesh.shape[axis])
            axes[i] = None
    return P(*axes)


def param_shardings(params, mesh, rules=PARAM_RULES):
    return jax.tree_util.tree_map_with_path(
        lambda keys, x: NamedSharding(mesh, spec_for(_path(keys), tuple(x.shape), mesh, rules)), params)


def _put(x, sharding):
    """Place a value every process holds in full onto a (possibly multi-process) sharding."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree, shardings):
    """Put every leaf of `tree` (held in full by every process) onto its sharding in `shardings`."""
    return jax.tree.map(_put, tree, shardings)


def shard_params(params, mesh, rules=PARAM_RULES):
    return place(params, param_shardings(params, mesh, rules))


def batch_sharding(mesh, ndim: int, batch_dim: int = 0, size: int | None = None) -> NamedSharding:
    """Split dim `batch_dim` over (data, fsdp) when it divides, else replicate (batch_shardings says so)."""
    n = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if size is not None and size % n:
        return NamedSharding(mesh, P())
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


_LOGGED_REPLICATED: set = set()


def batch_shardings(tree, mesh):
    """The sharding of every array leaf: batch dim 0 (M-RoPE positions [3, B, T]: 1) over (data, fsdp).

    A leaf whose batch dim does not divide is replicated: every chip computes all of it. That is by design
    for a micro-batch's prompt side (check_batch_layout makes its completion rows divide), never silent: a
    warning names the arrays, once per set of names."""
    n = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    replicated = []

    def one(keys, x):
        path = _path(keys)
        dim = 1 if path.endswith("positions") else 0
        size = np.shape(x)[dim]
        if size % n:
            replicated.append(f"{path or 'array'}[{size}]")
        return batch_sharding(mesh, np.ndim(x), dim, size)
    out = jax.tree_util.tree_map_with_path(one, tree)
    key = frozenset(r.split("[")[0] for r in replicated)
    if replicated and key not in _LOGGED_REPLICATED:
        _LOGGED_REPLICATED.add(key)
        log.warning("not split over data x fsdp = %d (replicated, every chip computes them; logged once): %s", n,
                    ", ".join(replicated))
    return out


def shard_batch(tree, mesh):
    """device_put every array leaf of `tree` (held in full by every process) onto its batch_shardings."""
    return jax.tree.map(_put, tree, batch_shardings(tree, mesh))
