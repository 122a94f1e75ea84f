"""Small layer functions written to match transformers' Qwen2.5-VL numerics (dtype casts included)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    # As transformers: normalise in float32, cast back to the input dtype, then scale.
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(dtype)


def layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    # As torch's LayerNorm for low-precision inputs: statistics (biased variance) and the affine in float32,
    # the result cast back to the input dtype.
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., T, H, D]; cos/sin [..., T, D] broadcast over heads."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def activation(name: str):
    acts = {"silu": jax.nn.silu, "swish": jax.nn.silu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu,
            # transformers' QuickGELUActivation (Qwen2-VL's vision default)
            "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}
    if name not in acts:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(acts)}")
    return acts[name]


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    y = x @ kernel
    return y if bias is None else y + bias
