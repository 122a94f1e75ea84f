"""Parameter containers: every weight is an nnx.Param; per-layer weights are stacked on a leading layer axis
so the forward pass scans over layers (one compiled layer body, fast compiles for 36-layer models)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], dtype, init: str = "normal", std: float = 0.02) -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros" or rngs is None:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value)
