"""Qwen2.5-VL window layers on windows as blocks (vision_index.window_blocks): the same features and gradients
as attending over the whole slot under the window mask, at attention FLOPs of the window size, not the slot."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxr1.flops import dot_flops
from jaxr1.models.qwen2_5_vl.config import VisionConfig
from jaxr1.models.qwen2_5_vl.vision import VisionTower
from jaxr1.models.qwen2_5_vl.vision_index import build_vision_layout

# window 56 px = 4 x 4 patches (2 x 2 merged tokens): 16 patches a window.
GRIDS = [(1, 16, 20), (1, 6, 10)]   # 4 x 5 windows; 2 x 3 windows with partial ones at the edges


def _tower(depth, full, seed=0):
    cfg = VisionConfig(depth=depth, hidden_size=32, intermediate_size=48, num_heads=2, window_size=56,
                       out_hidden_size=24, fullatt_block_indexes=full)
    tower = VisionTower(cfg, jnp.float32, nnx.Rngs(seed))
    graphdef, params = nnx.split(tower)
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), params)  # norms, biases too
    return cfg, graphdef, params


def _layout(cfg, grids, seed=0):
    n = sum(t * h * w for t, h, w in grids)
    pv = np.random.default_rng(seed).normal(size=(n, cfg.patch_dim)).astype(np.float32)
    return build_vision_layout(pv, np.asarray(grids), spatial_merge_size=2, window_size=56, patch_size=14)


def _run(graphdef, params, lay, blocks: bool):
    tower = nnx.merge(graphdef, params)
    return tower(jnp.asarray(lay.patches), jnp.asarray(lay.rope_hw), jnp.asarray(lay.window_ids),
                 jnp.asarray(lay.frame_ids), jnp.asarray(lay.restore),
                 window_slots=jnp.asarray(lay.window_slots) if blocks else None)


def test_window_blocks_hold_each_window():
    cfg, _, _ = _tower(2, (1,))
    lay = _layout(cfg, GRIDS)
    slots = lay.window_slots
    assert slots.shape == (2, 32, 16)   # P = 512 patches a slot: 32 blocks of 16 at least
    for s, (t, h, w) in enumerate(GRIDS):
        real = slots[s][slots[s] >= 0]
        assert sorted(real.tolist()) == list(range(t * h * w))       # every patch once
        for block in slots[s]:
            ids = lay.window_ids[s, block[block >= 0]]
            assert len(set(ids.tolist())) <= 1                          # one window a block
        assert (slots[s] >= 0).any(-1).sum() == {0: 20, 1: 6}[s]        # windows, partial ones included


@pytest.mark.parametrize("depth,full", [(4, (1, 3)), (3, (1,))])   # a repeating pattern (nested scan) / not
def test_blocks_equal_the_masked_slot(depth, full):
    cfg, graphdef, params = _tower(depth, full)
    lay = _layout(cfg, GRIDS)
    real = np.zeros(lay.restore.shape, bool)
    for s, n in enumerate(lay.num_tokens):
        real[s, :n] = True
    np.testing.assert_allclose(np.asarray(_run(graphdef, params, lay, True))[real],
                               np.asarray(_run(graphdef, params, lay, False))[real], atol=2e-5, rtol=1e-5)

    def loss(p, blocks):
        feats = _run(graphdef, p, lay, blocks)
        return jnp.sum(jnp.where(real[..., None], jnp.sin(feats), 0.0))
    g_blocks, g_mask = jax.grad(loss)(params, True), jax.grad(loss)(params, False)
    for a, b in zip(jax.tree.leaves(g_blocks), jax.tree.leaves(g_mask)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=1e-4)


def test_window_layers_cost_the_window():
    """Matmul FLOPs fall by exactly the masked slot's extra scores and weighted sums in the window layers:
    4 x E x (P^2 - W x n^2) per slot and window layer (E = hidden size, P patches, W blocks of n)."""
    cfg, graphdef, params = _tower(4, (1, 3))
    lay = _layout(cfg, [(1, 32, 32)])   # 1,024 patches = 64 full windows
    s, w, n = lay.window_slots.shape
    p = lay.patches.shape[1]
    flops = {b: dot_flops(lambda q: _run(graphdef, q, lay, b), params) for b in (True, False)}
    window_layers = cfg.depth - len(cfg.fullatt_block_indexes)
    assert flops[False] - flops[True] == pytest.approx(window_layers * s * 4 * cfg.hidden_size * (p * p - w * n * n))
    assert (w, n) == (64, 16)


def test_cudnn_window_blocks_match_xla(monkeypatch):
    """attention: cudnn on GPU runs the window blocks through the cuDNN wrapper (each block row one run of
    patches from slot 0: rolled, sequence lengths, no mask) and the full layers XLA. On CPU the same wrapper
    runs with jax's XLA implementation of `dot_product_attention` standing in for cuDNN: features and
    gradients equal the plain XLA tower's (so the rows, lengths and empty blocks are laid out right)."""
    from jaxr1.ops import attention as attn
    real_dpa = jax.nn.dot_product_attention
    calls = []

    def stand_in(*args, implementation=None, **kw):
        calls.append(implementation)
        return real_dpa(*args, implementation="xla" if implementation == "cudnn" else implementation, **kw)
    monkeypatch.setattr(attn.jax.nn, "dot_product_attention", stand_in)
    cfg, graphdef, params = _tower(4, (1, 3))
    lay = _layout(cfg, GRIDS)
    real = np.zeros(lay.restore.shape, bool)
    for s, n in enumerate(lay.num_tokens):
        real[s, :n] = True

    def loss(p, kind):
        tower = nnx.merge(graphdef, p)
        tower.attention = kind
        feats = tower(jnp.asarray(lay.patches), jnp.asarray(lay.rope_hw), jnp.asarray(lay.window_ids),
                      jnp.asarray(lay.frame_ids), jnp.asarray(lay.restore), window_slots=jnp.asarray(lay.window_slots))
        return jnp.sum(jnp.where(real[..., None], jnp.sin(feats), 0.0)), feats
    (_, f_c), g_c = jax.value_and_grad(loss, has_aux=True)(params, "cudnn")
    assert calls and set(calls) == {"cudnn"}        # the window layers went through the cuDNN wrapper
    (_, f_x), g_x = jax.value_and_grad(loss, has_aux=True)(params, "xla")
    np.testing.assert_allclose(np.asarray(f_c)[real], np.asarray(f_x)[real], atol=2e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_x)):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=1e-4)


def test_auto_picks_cudnn_for_window_layers_on_gpu(tmp_path):
    from jaxr1.models import set_attention
    from tests.models.test_attention_kernels import _model
    for family, vision in (("qwen2_5_vl", "cudnn"), ("qwen2_vl", "xla"), ("qwen3_vl", "xla")):
        model, _ = _model(family, tmp_path / family)
        assert set_attention(model, "auto", platform="gpu", dtype="bfloat16")["vision"] == vision, family
