"""The text decoders' KV cache (every family's full-attention layers): one K and one V per layer, stacked."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, Hkv, D]
    v: jax.Array

    @classmethod
    def zeros(cls, cfg, batch: int, length: int, dtype) -> "KVCache":
        # cfg: any family's text config
        shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
