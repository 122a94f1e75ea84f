"""Where the sampler's arrays live on a (data, fsdp, tensor) mesh.

A rollout is data parallel: its B*n rows are split over the batch axes (data x fsdp) when they divide, so
each chip decodes only its own rows and holds only their caches. The B prompts (and their prompt KV cache)
are split over the same axes when B divides, else replicated (every chip keeps every prompt's cache; its rows
read the prompt they belong to). Weights are gathered over the batch axes (kept split over `tensor`) and cast
once per call, before prefill and before the decode loop, so the loop body holds no weight all-gather.
Attention heads of the caches go on `tensor` where that axis divides them (its projections are column
parallel there). Without a mesh every function here is the identity.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxr1.parallel.mesh import BATCH_AXES
from jaxr1.parallel.rules import param_shardings
from jaxr1.parallel.rules import place
from jaxr1.sampling.decode import GenKV, PromptKV

log = logging.getLogger("jaxr1.sampling")


def batch_shards(mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def _batch_axes(mesh, size: int):
    """BATCH_AXES (those the mesh has) when `size` splits over them, else None (replicated)."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return axes if axes and size % batch_shards(mesh) == 0 else None


def _drop_batch_axes(spec: P) -> P:
    def drop(entry):
        if entry is None:
            return None
        names = tuple(entry) if isinstance(entry, tuple) else (entry,)
        kept = tuple(a for a in names if a not in BATCH_AXES)
        return None if not kept else kept[0] if len(kept) == 1 else kept
    return P(*(drop(e) for e in spec))


def gathered_param_shardings(params, mesh):
    """The sampler's weight layout: the trainer's rules (`jaxr1.parallel.rules`) without the batch axes, i.e.
    whole on every data / fsdp shard and still split over `tensor`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, _drop_batch_axes(s.spec)), param_shardings(params, mesh))


def gather_params(params, mesh, dtype=None):
    """Cast (before moving: fewer bytes) and gather the weights once per call; outside any compiled loop."""
    if dtype is not None:
        params = jax.tree.map(lambda x: x if x.dtype == dtype else x.astype(dtype), params)
    if mesh is None:
        return params
    return jax.device_put(params, gathered_param_shardings(params, mesh))


def constrain_params(params, mesh):
    """Inside a program: pin the weights to the gathered layout (a no-op for weights `gather_params` placed;
    for fsdp-sharded ones it is one all-gather here, before any loop, never one per step)."""
    if mesh is None:
        return params
    return jax.lax.with_sharding_constraint(params, gathered_param_shardings(params, mesh))


@dataclasses.dataclass(frozen=True)
class RolloutSharding:
    """Partitioning of one rollout's arrays: `rows` / `prompts` are the axes their leading dim is split over
    (None: replicated), `heads` the axis of the caches' KV-head dim."""
    mesh: jax.sharding.Mesh | None
    rows: tuple | None = None
    prompts: tuple | None = None
    heads: str | None = None

    @classmethod
    def make(cls, mesh, *, prompts: int, rows: int, kv_heads: int) -> "RolloutSharding":
        if mesh is None:
            return cls(None)
        t = mesh.shape.get("tensor", 1)
        lay = cls(mesh, _batch_axes(mesh, rows), _batch_axes(mesh, prompts),
                  "tensor" if t > 1 and kv_heads % t == 0 else None)
        if lay.rows is None:
            log.warning("sampler: %d rows do not split over data x fsdp = %d: every chip decodes all of them",
                        rows, batch_shards(mesh))
        return lay

    def _put(self, x, dim: int, axes, heads_dim: int | None = None):
        if self.mesh is None or x is None:
            return x
        spec = [None] * x.ndim
        spec[dim] = axes
        if heads_dim is not None and self.heads is not None:
            spec[heads_dim] = self.heads
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(*spec)))

    def row_sharding(self, ndim: int) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, P(self.rows, *([None] * (ndim - 1))))

    def rows_(self, x, dim: int = 0):
        return self._put(x, dim, self.rows)

    def prompts_(self, x, dim: int = 0):
        return self._put(x, dim, self.prompts)

    def cache(self, kv, axes, stacked: bool):
        """A per-layer tuple of [N, Hkv, ...] caches or one stacked [L, N, Hkv, ...] array."""
        if self.mesh is None:
            return kv
        d = 1 if stacked else 0
        one = lambda x: self._put(x, d, axes, heads_dim=d + 1)
        return tuple(one(x) for x in kv) if isinstance(kv, tuple) else one(kv)

    def state(self, s):
        """Every field of a SamplerState on its sharding (scalars and the key replicated)."""
        if self.mesh is None:
            return s
        stacked = not isinstance(s.prompt.k, tuple)
        prompt = PromptKV(self.cache(s.prompt.k, self.prompts, stacked), self.cache(s.prompt.v, self.prompts, stacked),
                          self.prompts_(s.prompt.valid))
        gen = None if s.gen is None else GenKV(self.cache(s.gen.k, self.rows, stacked),
                                               self.cache(s.gen.v, self.rows, stacked))
        rows = {f: self.rows_(getattr(s, f)) for f in s.ROW_FIELDS}
        return dataclasses.replace(s, prompt=prompt, gen=gen, **rows)


def place_prompts(batch, mesh):
    """Host prompts (every process holds all of them) onto the mesh, on `prompt_shardings`."""
    return place(batch, prompt_shardings(batch, mesh))


def prompt_shardings(batch, mesh):
    """The prompts' shardings: dim B over the batch axes when B splits over them, else replicated; images
    replicated (the vision tower runs once, in prefill)."""
    b = int(np.shape(batch.prompt_lengths)[0])
    axes = _batch_axes(mesh, b)
    if axes is None:
        log.info("sampler: %d prompts do not split over data x fsdp = %d: prompts replicated, rows split", b,
                 batch_shards(mesh))

    def one(keys, x):
        names = [str(getattr(k, "name", getattr(k, "key", k))) for k in keys]
        if "vision" in names or np.ndim(x) == 0:
            return NamedSharding(mesh, P())
        dim = 1 if names[-1] == "positions" else 0
        spec = [None] * np.ndim(x)
        spec[dim] = axes
        return NamedSharding(mesh, P(*spec))
    return jax.tree_util.tree_map_with_path(one, batch)
