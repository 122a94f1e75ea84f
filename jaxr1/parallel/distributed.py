"""Multi-host start-up: `jax.distributed.initialize` from the environment, before any other JAX call.

- TPU pods (GCE TPU VMs, GKE, multislice): no arguments; JAX finds the slice's hosts itself. Whether this
  is a pod at all (more than one host) is jaxr1.parallel.tpu.slice_hosts: a single-host TPU VM is not.
- SLURM: JAX's SLURM cluster detection (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID, ...), one task per host.
- Anything else (a GPU cluster without SLURM, tests on localhost): JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID (and JAX_LOCAL_DEVICE_IDS if a host runs several processes).
A single process with none of these set does nothing.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxr1.data.processing import PromptBatch
from jaxr1.parallel.tpu import slice_hosts

log = logging.getLogger("jaxr1.parallel")


def initialize_from_env() -> bool:
    """Returns True when this is a multi-process run (and the runtime is initialised)."""
    env = os.environ
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in env:
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
        if "JAX_LOCAL_DEVICE_IDS" in env:
            kwargs["local_device_ids"] = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
        if env.get("JAX_PLATFORMS", "").startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU collectives across processes
    elif int(env.get("SLURM_NTASKS", "1")) > 1:
        pass  # JAX's SLURM detection fills in everything
    else:
        hosts = slice_hosts(env)
        if hosts == 1:
            return False
        # A pod, or a TPU VM whose host count could not be read: JAX's TPU cluster detection does the rest.
        log.info("TPU slice of %s hosts: jax.distributed.initialize()", "unknown" if hosts is None else hosts)
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


def _allgather(x):
    return np.asarray(multihost_utils.process_allgather(x))


def _gather_padded(x: np.ndarray, axis: int) -> list[np.ndarray]:
    """Every process's array (shapes may differ along `axis` only), in process order."""
    sizes = _allgather(np.asarray(x.shape[axis], np.int64)).reshape(-1)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, int(sizes.max()) - x.shape[axis])
    stacked = _allgather(np.pad(x, pad))
    return [np.take(stacked[p], np.arange(int(n)), axis=axis) for p, n in enumerate(sizes)]


def _gather_objects(obj) -> list:
    raw = np.frombuffer(json.dumps(obj, default=str).encode(), np.uint8)
    return [json.loads(bytes(b).decode()) for b in _gather_padded(raw, 0)]


def gather_prompt_batch(batch: PromptBatch) -> PromptBatch:
    """The global batch from every host's PromptBatch, rows interleaved (global row i*P + p is process p's row
    i): with strided per-host sharding of unshuffled data this is exactly the single-process order. Every
    process then holds identical host arrays, which jit treats as replicated input and GSPMD splits by the
    shardings we give it."""
    n = jax.process_count()
    if n == 1:
        return batch
    b = batch.batch_size
    return PromptBatch.concat(_gather_batches(batch)).take([p * b + i for i in range(b) for p in range(n)])


def _gather_batches(batch: PromptBatch) -> list[PromptBatch]:
    """Every process's PromptBatch as it is there (prompt widths and image counts may differ), in process order."""
    ids, mask = _gather_padded(batch.input_ids, 1), _gather_padded(batch.attention_mask, 1)
    valid, counts = _allgather(batch.valid), _allgather(batch.image_counts)
    has_images = batch.pixel_values is not None
    dim = int(_allgather(np.asarray(batch.pixel_values.shape[1] if has_images else 0)).max())
    grids = _gather_padded(batch.image_grid_thw if has_images else np.zeros((0, 3), np.int64), 0)
    pixels = _gather_padded(batch.pixel_values if has_images else np.zeros((0, dim), np.float32), 0)
    examples = _gather_objects(batch.reward_inputs)
    return [PromptBatch(ids[p], mask[p], pixels[p] if len(grids[p]) else None, grids[p] if len(grids[p]) else None,
                        examples[p], valid[p], counts[p]) for p in range(len(ids))]


def gather_json(obj) -> list:
    """Every process's JSON-able object (e.g. data iterator states for a checkpoint), in process order."""
    return [obj] if jax.process_count() == 1 else _gather_objects(obj)


def to_host(x) -> np.ndarray:
    """A (possibly multi-process, sharded) jax.Array as a numpy array holding every row, on every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.sharding.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
