"""Per-token log-probabilities and entropies from final hidden states, chunked over the sequence.

Qwen2.5-VL's vocabulary has 151,936 entries: fp32 logits for a [N, T] batch would be N*T*0.6 MB,
more than the rest of the train step. We project one chunk of positions at a time inside a
lax.scan with a custom VJP that saves no logits, so forward and backward only hold a few
[N, chunk, V] f32 buffers (about four on XLA:CPU) at once, whatever T is.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def token_logprobs(
    hidden: Array,
    lm_head_w: Array,
    targets: Array,
    *,
    chunk_size: int = 128,
    temperature: float = 1.0,
    transpose_w: bool = False,
    precision: jax.lax.PrecisionLike | None = None,
) -> tuple[Array, Array]:
    """log p(targets) and entropy of softmax(hidden @ W / temperature); both [N, T] float32.

    hidden: [N, T, D] final hidden states (after the final norm); targets: [N, T] int token ids.
    lm_head_w: [D, V], or the tied embedding [V, D] with transpose_w=True.
    temperature: the sampler's, so the trainer scores tokens under the distribution they came from.
    precision: None = the policy of `matmul_policy` (by the input dtype); pass one to override.
    Positions are padded up to a multiple of chunk_size; padded outputs are dropped.
    """
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy sampling has no log-probs), got {temperature}")
    n, t, d = hidden.shape
    if targets.shape != (n, t):
        raise ValueError(f"targets shape {targets.shape} != hidden's [N, T] {(n, t)}")
    dtype = jnp.promote_types(hidden.dtype, lm_head_w.dtype)
    hidden, lm_head_w = hidden.astype(dtype), lm_head_w.astype(dtype)
    if lm_head_w.shape[1 if transpose_w else 0] != d:
        raise ValueError(f"lm_head_w {lm_head_w.shape} does not match hidden size {d} (transpose_w={transpose_w})")

    chunk = max(1, min(chunk_size, t))
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # Chunk axis first (scan axis); N stays a batch axis so a data-parallel sharding of N survives.
    hidden_c = hidden.reshape(n, n_chunks, chunk, d).swapaxes(0, 1)
    targets_c = targets.reshape(n, n_chunks, chunk).swapaxes(0, 1)
    spec = "ncd,vd->ncv" if transpose_w else "ncd,dv->ncv"

    operand, default_precision = matmul_policy(dtype)
    chunk_fn = _chunk_fn(spec, default_precision if precision is None else precision, operand)

    def body(carry: None, xs: tuple[Array, Array]) -> tuple[None, tuple[Array, Array]]:
        return carry, chunk_fn(lm_head_w, xs[0], xs[1], jnp.asarray(temperature, jnp.float32))

    _, (logp, entropy) = jax.lax.scan(body, None, (hidden_c, targets_c))
    logp = logp.swapaxes(0, 1).reshape(n, n_chunks * chunk)[:, :t]
    entropy = entropy.swapaxes(0, 1).reshape(n, n_chunks * chunk)[:, :t]
    return logp, entropy


def matmul_policy(dtype) -> tuple[jnp.dtype, jax.lax.Precision]:
    """The one place that decides the lm-head log-prob matmuls' operand dtype and precision (always with
    float32 accumulation). bf16/fp16 models (accelerators): the backward's logit cotangent goes into the
    matmul in the model dtype at DEFAULT precision, a single tensor-core / MXU pass, as autodiff of a bf16
    matmul does (float32 operands there would run plain FP32 on an H100 and 6 passes on a TPU, for the
    largest matmuls of the step). float32 models (CPU parity, the tests): float32 at HIGHEST, since GPUs
    would otherwise use TF32, whose ~1e-3 relative logit error moves log-ratios by more than GSPO's 3e-4
    clip range. The trainer/sampler log-prob gap metric shows what bf16 costs."""
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return dtype, jax.lax.Precision.DEFAULT
    return jnp.dtype(jnp.float32), jax.lax.Precision.HIGHEST


def _chunk_fn(spec: str, precision: jax.lax.PrecisionLike, operand=jnp.float32) -> Callable[..., tuple[Array, Array]]:
    """(w, h [N,c,D], tgt [N,c], temperature) -> (logp, entropy) [N,c], with a hand-written VJP.

    Residuals are the chunk's inputs plus two [N, c] vectors, so nothing of size V is saved across
    the scan; the backward recomputes the logits and forms their cotangent in closed form with an
    iota compare instead of the scatter that autodiff of take_along_axis would emit.
    """
    w_spec = spec.split(",")[1].split("->")[0]  # "dv" or "vd"

    def logits_of(w: Array, h: Array, temperature: Array) -> Array:
        logits = jnp.einsum(spec, h, w, preferred_element_type=jnp.float32, precision=precision)
        return logits / temperature

    def forward(w, h, tgt, temperature):
        logits = logits_of(w, h, temperature)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, tgt[..., None].astype(jnp.int32), axis=-1)[..., 0]
        entropy = lse - jnp.sum(jnp.exp(logits - lse[..., None]) * logits, axis=-1)
        return (target_logit - lse, entropy), (w, h, tgt, temperature, lse, entropy)

    def backward(res, cotangents):
        w, h, tgt, temperature, lse, entropy = res
        g_logp, g_ent = cotangents
        logp_all = logits_of(w, h, temperature) - lse[..., None]
        onehot = jnp.arange(logp_all.shape[-1], dtype=jnp.int32) == tgt[..., None].astype(jnp.int32)
        # d logp_tgt / dz = onehot - p;  d H / dz = -p * (log p + H)   (z = logits / temperature).
        # Written with p used once so XLA fuses it into a single elementwise pass over the logits.
        g_z = jnp.exp(logp_all) * (-g_logp[..., None] - g_ent[..., None] * (logp_all + entropy[..., None]))
        g_z = g_z + jnp.where(onehot, g_logp[..., None], 0.0)
        g_z = g_z / temperature
        g_z = g_z.astype(operand)
        f32 = jnp.float32
        g_h = jnp.einsum(f"ncv,{w_spec}->ncd", g_z, w.astype(operand), precision=precision, preferred_element_type=f32)
        g_w = jnp.einsum(f"ncd,ncv->{w_spec}", h.astype(operand), g_z, precision=precision, preferred_element_type=f32)
        # Temperature is the sampler's constant, not a parameter: no gradient.
        return g_w.astype(w.dtype), g_h.astype(h.dtype), None, jnp.zeros_like(temperature)

    fn = jax.custom_vjp(lambda w, h, tgt, temperature: forward(w, h, tgt, temperature)[0])
    fn.defvjp(forward, backward)
    return fn
