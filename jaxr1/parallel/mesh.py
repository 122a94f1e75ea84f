"""The device mesh from config: axes (data, fsdp, tensor) whose sizes multiply to the device count.

Axis types are Auto (GSPMD propagates shardings from the parameters and the batch); JAX 0.10+ defaults
`jax.make_mesh` to Explicit, which would ask every op for a sharding rule.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from jaxr1.errors import UserError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")   # the batch is split over both; fsdp also splits the parameters


class MeshError(UserError, ValueError):
    pass


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Fill the one -1 axis so the sizes multiply to num_devices; a clear error otherwise."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError(f"parallel: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"parallel: axis sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(f"parallel: {num_devices} devices cannot be split as data={data} fsdp={fsdp} "
                            f"tensor={tensor} ({num_devices} is not a multiple of {known})")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(f"parallel: data x fsdp x tensor = {math.prod(sizes)} but there are {num_devices} devices")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=auto)
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)
