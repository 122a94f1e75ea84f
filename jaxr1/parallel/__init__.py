"""Device mesh (data / fsdp / tensor), logical sharding rules kept as data, multi-host initialisation."""
from jaxr1.parallel.mesh import BATCH_AXES, MeshError, make_mesh, mesh_shape
from jaxr1.parallel.rules import PARAM_RULES, batch_sharding, param_shardings, shard_batch, shard_params

__all__ = ["BATCH_AXES", "MeshError", "make_mesh", "mesh_shape", "PARAM_RULES", "batch_sharding",
           "param_shardings", "shard_batch", "shard_params"]
