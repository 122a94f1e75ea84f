"""jaxr1.flops counts matmul FLOPs with loop trip counts: a scan body `length` times (XLA's cost analysis
counts it once), the backward at twice the forward, remat's recomputation, a while body by the trips given."""
import jax
import jax.numpy as jnp

from jaxr1.flops import decoder_flops, dot_flops

X = jax.ShapeDtypeStruct((8, 16), jnp.float32)
W = jax.ShapeDtypeStruct((4, 16, 16), jnp.float32)
ONE = 2 * 8 * 16 * 16


def layers(w, x, remat=False):
    body = lambda h, wi: (jnp.tanh(h @ wi), None)
    return jax.lax.scan(jax.checkpoint(body) if remat else body, x, w)[0].sum()


def test_scan_grad_remat_and_while_are_counted():
    assert dot_flops(layers, W, X) == 4 * ONE
    assert dot_flops(jax.jit(jax.grad(layers)), W, X) == 3 * 4 * ONE          # jit and grad looked through
    assert dot_flops(jax.grad(lambda w, x: layers(w, x, remat=True)), W, X) == 4 * 4 * ONE
    loop = lambda w, x: jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] @ w[0]), (0, x))[1]
    assert dot_flops(loop, W, X, while_trips=5) == 5 * ONE


def test_decoder_units_match_a_traced_layer():
    from jaxr1.dry_run import model_config
    t = model_config("Qwen/Qwen2.5-VL-3B-Instruct").text
    f = decoder_flops(t)
    assert f["logit"] == 2 * t.hidden_size * t.vocab_size
    assert f["pair"] == 4 * t.num_hidden_layers * t.num_attention_heads * t.head_dim
    assert 5.5e9 < f["token"] < 6.5e9        # ~3.1B non-embedding weights, 2 FLOPs each
