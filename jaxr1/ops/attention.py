"""Masked multi-head attention with grouped KV heads; one reference XLA path, optional fused backends.

Shapes: q [B, Tq, H, D], k/v [B, S, Hkv, D], mask [B, Tq, S] (True = may attend). Scores and softmax run in
float32 whatever the input dtype (as transformers' eager path does), the weighted sum in the value dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -1e30  # finite, so a fully masked row gives a uniform (not NaN) distribution


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float | None = None,
              implementation: str = "xla") -> jax.Array:
    if implementation == "xla":
        return _attention_xla(q, k, v, mask, scale)
    if implementation in ("cudnn", "fused"):
        # jax's fused path (cuDNN flash attention on GPU); needs an explicit [B, H, Tq, S] mask.
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale,
                                            implementation="cudnn" if implementation == "cudnn" else None)
    raise ValueError(f"unknown attention implementation {implementation!r} (expected 'xla', 'cudnn' or 'fused')")


def _attention_xla(q, k, v, mask, scale):
    b, tq, h, d = q.shape
    hkv = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    q = q.reshape(b, tq, hkv, h // hkv, d)
    scores = jnp.einsum("bqhgd,bshd->bhgqs", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqs,bshd->bqhgd", probs, v)
    return out.reshape(b, tq, h, d)
