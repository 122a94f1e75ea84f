"""Device mesh (data / fsdp / tensor), logical sharding rules kept as data, batch layout checks, multi-host
initialisation."""
from jaxr1.parallel.layout import MicroBatchPlan, check_batch_layout
from jaxr1.parallel.mesh import BATCH_AXES, MeshError, make_mesh, mesh_shape
from jaxr1.parallel.rules import (PARAM_RULES, batch_sharding, batch_shardings, param_shardings, shard_batch,
                                  shard_params)

__all__ = ["BATCH_AXES", "MicroBatchPlan", "MeshError", "check_batch_layout", "make_mesh", "mesh_shape", "PARAM_RULES",
           "batch_sharding", "batch_shardings", "param_shardings", "shard_batch", "shard_params"]
