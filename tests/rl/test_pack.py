"""Completion packing: a prompt's completions packed into shared rows give the repeated forward's log-probs
and gradients (both decoder families, an image, left padding, lengths that differ), the same loss and
gradients through the learner (micro-batches accumulated), fewer rows, and a bounded set of compilations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxr1.rl.pack import choose_layout, first_fit, pack, row_buckets, row_lengths, rows_needed
from tests.rl.test_shared_prompt import G, inputs
from tests.rl.test_trim_accumulate import fresh, micro_batches, setup  # noqa: F401 (fixture)


def test_first_fit_rows_and_buckets():
    bins = first_fit(np.array([5, 0, 9, 3, 4, 2]), 9)
    assert sorted(sorted(b) for b in bins) == [[0, 4], [2], [3, 5]]       # decreasing; the empty one takes no room
    assert rows_needed(np.array([1, 9, 4, 7, 2, 5]), 3, 9) == 4
    assert row_buckets(8, 64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert row_buckets(1, 6) == [1, 2, 3, 4, 5, 6] and row_buckets(1, 64)[7:] == [8, 10, 13, 17, 22, 28, 35, 44, 55, 64]
    assert all(b / a <= 1.25 for a, b in zip(row_lengths(512)[3:], row_lengths(512)[4:])) and row_lengths(512)[-1] == 1024
    # long-tailed lengths of 8 prompts x G = 8 (mean ~120, max 512): packing fills most of what it runs
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(np.log(90), 0.75, 64).astype(int) + 1, 512)
    L, R = choose_layout([lengths], 8, int(lengths.max()), 512, 8)
    assert R * L >= lengths.sum() and R <= 64
    fill = lengths.sum() / (R * L)
    unpacked = lengths.sum() / (64 * next(b for b in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
                                          if b >= lengths.max()))
    print(f"fill packed {fill:.2f} ({R} x {L}) vs trimmed {unpacked:.2f}")
    assert fill > 0.7 and fill > 2 * unpacked


def test_pack_places_every_token_once():
    rng = np.random.default_rng(3)
    lengths = np.array([1, 9, 4, 0, 7, 2, 5, 3])
    tokens = rng.integers(1, 99, (8, 9)).astype(np.int32) * (np.arange(9)[None] < lengths[:, None])
    p = pack(tokens, lengths, 4, 12, 4)
    flat = p.tokens.reshape(-1)
    for n, m in enumerate(lengths):
        np.testing.assert_array_equal(flat[p.source[n, :m]], tokens[n, :m])
        np.testing.assert_array_equal(p.offsets.reshape(-1)[p.source[n, :m]], np.arange(m))
        assert (p.row_prompt[p.source[n, :m] // 12] == n // 4).all()
    assert (p.segments > 0).sum() == lengths.sum()
    with pytest.raises(ValueError, match="more than 2 rows"):
        pack(tokens, lengths, 4, 12, 2)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_packed_forward_equals_the_repeated_forward(family):
    from flax import nnx

    from jaxr1 import models
    from jaxr1.rl.policy import completion_logprobs
    from tests.models.test_lora import TINY
    model = models.load_hf(TINY[family])
    prompt, deltas, comp, cmask = inputs(model)
    lengths = np.asarray(cmask).sum(-1)
    graphdef, params = nnx.split(model, nnx.Param)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(comp.shape), jnp.float32)

    def run(p, packed, shared=True):
        lp, ent = completion_logprobs(nnx.merge(graphdef, p), prompt, deltas, comp, cmask, shared_prompt=shared,
                                      packed=packed)
        return (lp * weights * cmask).sum() + 0.1 * (ent * cmask).sum(), (lp, ent)

    grad = jax.value_and_grad(run, has_aux=True)
    (_, (lp_r, ent_r)), g_r = jax.jit(grad, static_argnums=(1, 2))(params, None, False)
    m = np.asarray(cmask, bool)
    for length, rows in ((9, 4), (16, 2)):          # rows of the longest completion, and longer rows
        packed = pack(np.asarray(comp), lengths, G, length, rows)
        assert rows_needed(lengths, G, length) == rows
        (_, (lp, ent)), g = jax.jit(grad)(params, packed)
        np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp_r)[m], atol=2e-5, rtol=1e-5,
                                   err_msg=f"log-probs, rows of {length}")
        np.testing.assert_allclose(np.asarray(ent)[m], np.asarray(ent_r)[m], atol=2e-5, rtol=1e-5)
        for (path, a), (_, b) in zip(*(jax.tree_util.tree_flatten_with_path(jax.device_get(x))[0] for x in (g, g_r))):
            scale = max(float(np.abs(b).max()), 1e-6)
            assert float(np.abs(a - b).max()) <= 1e-4 * scale + 1e-6, (length, jax.tree_util.keystr(path))


def test_packed_learner_step_equals_unpacked(setup):  # noqa: F811
    """Through the learner: packed micro-batches (accumulated) give the unpacked loss, gradients and
    log-probs in the [completions, Tc] layout."""
    import dataclasses

    from jaxr1.rl.losses import compute_loss_normalizer
    from jaxr1.rl.trim import trimmed_length
    cfg, model, Learner, batch, tokens, lengths = setup
    learner = Learner(model, cfg.rl, cfg.optim, 10)
    state = learner.init(fresh(model))
    t = trimmed_length(lengths, tokens.shape[1])
    plain, mask = micro_batches(cfg, model, batch, tokens, lengths, t, 2)
    norm = float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation))
    L, R = choose_layout([lengths[:4], lengths[4:]], 4, t, tokens.shape[1], 1)
    assert R < 4
    packed = [dataclasses.replace(mb, packed=pack(np.asarray(mb.completions), np.asarray(mb.mask).sum(-1), 4, L, R))
              for mb in plain]
    out = []
    for mbs in (plain, packed):
        g, m, lp0 = learner.grads(state.params, mbs[0], norm)
        g, m, lp1 = learner.accumulate(state.params, learner.frozen, mbs[1], norm, g, m)
        out.append((jax.device_get(g), float(m["loss"]), np.concatenate([lp0, lp1]) * mask))
    (g_a, loss_a, lp_a), (g_b, loss_b, lp_b) = out
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    np.testing.assert_allclose(lp_b, lp_a, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())


def test_packed_compilations_stay_bounded(setup):  # noqa: F811
    """One compilation per (row length, rows) layout, the loss layout following the row length (as
    rl.step does); and a realistic run's lengths land on few layouts."""
    import collections
    import dataclasses

    from jaxr1.rl.losses import compute_loss_normalizer
    cfg, model, Learner, batch, tokens, _ = setup
    tc = tokens.shape[1]
    learner = Learner(model, cfg.rl, cfg.optim, 10)
    params = learner.init(fresh(model)).params
    before = Learner.grads_fn._cache_size()
    rng = np.random.default_rng(5)
    shapes = set()
    for _ in range(12):                                      # twelve steps of long-tailed lengths
        lengths = np.minimum(rng.lognormal(np.log(8), 0.9, 8).astype(int) + 1, tc)
        L, R = choose_layout([lengths], 4, int(lengths.max()), tc, 1)
        (mb,), mask = micro_batches(cfg, model, batch, tokens, lengths, min(L, tc), 1)
        mb = dataclasses.replace(mb, packed=pack(np.asarray(mb.completions), lengths, 4, L, R))
        shapes.add((L, R))
        learner.grads(params, mb, float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation)))
    compiles = Learner.grads_fn._cache_size() - before
    assert compiles == len(shapes), (compiles, sorted(shapes))
    # 200 steps of 8 prompts x G = 8, max 512, lengths mean ~120: layouts over 1 and 8 batch shards
    for shards, most in ((1, 16), (8, 8)):
        rng = np.random.default_rng(0)
        seen = collections.Counter()
        for _ in range(200):
            lengths = np.minimum(rng.lognormal(np.log(90), 0.75, 64).astype(int) + 1, 512)
            seen[choose_layout([lengths], 8, int(lengths.max()), 512, shards)] += 1
        print(f"{shards} shard(s): {len(seen)} layouts in 200 steps, most used {seen.most_common(3)}")
        assert len(seen) <= most
