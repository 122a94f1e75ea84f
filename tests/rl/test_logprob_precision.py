"""The lm-head log-prob matmuls follow one precision policy (rl.logprobs.matmul_policy): bf16 operands with
float32 accumulation in bf16 models (every dot of forward and backward), float32 at HIGHEST in fp32 ones."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxr1.rl.logprobs import matmul_policy, token_logprobs


def _loss(h, w, tgt):
    lp, ent = token_logprobs(h, w, tgt, chunk_size=8)
    return lp.sum() + 0.1 * ent.sum()


def _dot_operand_types(fn, *args) -> set[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return {m for line in text.splitlines() if "dot_general" in line
            for m in re.findall(r"tensor<[\dx]+x(bf16|f32)>", line.split("->")[0])}


def test_bf16_dots_take_bf16_operands_and_stay_close_to_fp32():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (2, 16, 32))
    w = jax.random.normal(k2, (32, 100)) * 0.2
    tgt = jax.random.randint(k3, (2, 16), 0, 100)
    grad = jax.grad(_loss, argnums=(0, 1))
    assert _dot_operand_types(grad, h.astype(jnp.bfloat16), w.astype(jnp.bfloat16), tgt) == {"bf16"}
    assert _dot_operand_types(grad, h, w, tgt) == {"f32"}
    assert matmul_policy(jnp.float32)[1] == jax.lax.Precision.HIGHEST
    g32 = grad(h, w, tgt)
    g16 = grad(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16), tgt)
    for a, b in zip(g32, g16):
        rel = float(jnp.abs(a - b.astype(jnp.float32)).max() / jnp.abs(a).max())
        assert rel < 0.05, rel
    lp32 = token_logprobs(h, w, tgt)[0]
    lp16 = token_logprobs(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16), tgt)[0]
    assert np.abs(np.asarray(lp32 - lp16)).max() < 0.1
