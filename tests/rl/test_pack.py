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
    L, R, K = choose_layout([lengths], 8, int(lengths.max()), 512, 8, max_prompts=1)
    assert R * L >= lengths.sum() and R <= 64 and K == 1
    fill = lengths.sum() / (R * L)
    unpacked = lengths.sum() / (64 * next(b for b in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
                                          if b >= lengths.max()))
    # two prompts a row (what a 3B-shaped model's cost picks: a 384-token prompt's keys add ~2% to a slot)
    L2, R2, K2 = choose_layout([lengths], 8, int(lengths.max()), 512, 1, prompt_len=384, key_cost=5e-5)
    fill2 = lengths.sum() / (R2 * L2)
    print(f"fill packed {fill:.2f} ({R} x {L}), two prompts a row {fill2:.2f} ({R2} x {L2}) vs trimmed {unpacked:.2f}")
    assert fill > 0.7 and fill > 2 * unpacked and K2 == 2 and fill2 > 0.85
    # where a key costs as much as a token, rows keep one prompt
    assert choose_layout([lengths], 8, int(lengths.max()), 512, 1, prompt_len=384, key_cost=1e-2)[2] == 1


def test_rows_of_two_prompts():
    lengths = np.array([1, 9, 4, 7, 2, 5])     # two prompts of G = 3, 14 tokens each
    bins = [sorted(b) for b in first_fit(lengths, 16, 3, 2)]
    assert sorted(bins) == [[0, 2, 4, 5], [1, 3]] and rows_needed(lengths, 3, 16, 1) == 2
    # three prompts a row never happen with two allowed
    lengths = np.array([3, 3, 3, 3, 3, 3])      # three prompts of G = 2
    assert all(len({i // 2 for i in b}) <= 2 for b in first_fit(lengths, 18, 2, 2))
    assert rows_needed(lengths, 2, 18, 2) == 2 and rows_needed(lengths, 2, 18, 3) == 1


def test_pack_places_every_token_once():
    rng = np.random.default_rng(3)
    lengths = np.array([1, 9, 4, 0, 7, 2, 5, 3])
    tokens = rng.integers(1, 99, (8, 9)).astype(np.int32) * (np.arange(9)[None] < lengths[:, None])
    for rows, prompts in ((4, 1), (3, 2)):
        p = pack(tokens, lengths, 4, 12, rows, prompts)
        flat = p.tokens.reshape(-1)
        for n, m in enumerate(lengths):
            np.testing.assert_array_equal(flat[p.source[n, :m]], tokens[n, :m])
            np.testing.assert_array_equal(p.offsets.reshape(-1)[p.source[n, :m]], np.arange(m))
            assert (p.token_prompt.reshape(-1)[p.source[n, :m]] == n // 4).all()
            assert (p.row_prompts[p.source[n, :m] // 12] == n // 4).any(-1).all()   # the row reads its prompt
        assert (p.segments > 0).sum() == lengths.sum() and p.row_prompts.shape == (rows, prompts)
    assert (p.row_prompts >= 0).sum(-1).max() == 2        # a row of both prompts
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
    # rows of the longest completion, longer rows, and rows holding both prompts' completions
    for length, rows, prompts in ((9, 4, 1), (16, 2, 1), (16, 2, 2), (32, 1, 2)):
        packed = pack(np.asarray(comp), lengths, G, length, rows, prompts)
        assert rows_needed(lengths, G, length, prompts) == rows
        assert prompts == 1 or (np.asarray(packed.row_prompts) >= 0).sum(-1).max() == 2
        (_, (lp, ent)), g = jax.jit(grad)(params, packed)
        np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lp_r)[m], atol=2e-5, rtol=1e-5,
                                   err_msg=f"log-probs, rows of {length}, {prompts} prompts")
        np.testing.assert_allclose(np.asarray(ent)[m], np.asarray(ent_r)[m], atol=2e-5, rtol=1e-5)
        for (path, a), (_, b) in zip(*(jax.tree_util.tree_flatten_with_path(jax.device_get(x))[0] for x in (g, g_r))):
            scale = max(float(np.abs(b).max()), 1e-6)
            assert float(np.abs(a - b).max()) <= 1e-4 * scale + 1e-6, (length, prompts, jax.tree_util.keystr(path))


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
    L, R, K = choose_layout([lengths[:4], lengths[4:]], 4, t, tokens.shape[1], 1)
    assert R < 4
    packed = [dataclasses.replace(mb, packed=pack(np.asarray(mb.completions), np.asarray(mb.mask).sum(-1), 4, L, R, K))
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


@pytest.mark.slow   # ~2 min: twelve compilations of the packed step
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
        L, R, K = choose_layout([lengths], 4, int(lengths.max()), tc, 1)
        (mb,), mask = micro_batches(cfg, model, batch, tokens, lengths, min(L, tc), 1)
        mb = dataclasses.replace(mb, packed=pack(np.asarray(mb.completions), lengths, 4, L, R, K))
        shapes.add((L, R, K))
        learner.grads(params, mb, float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation)))
    compiles = Learner.grads_fn._cache_size() - before
    assert compiles == len(shapes), (compiles, sorted(shapes))
    # 200 steps of 8 prompts x G = 8, max 512, lengths mean ~120, costed as for Qwen2.5-VL-3B with a
    # 384-token prompt: layouts over 1 and 8 batch shards, one prompt a row (14 / 7 measured) and up to two
    # (24 / 11: rows shared by two prompts fill 0.86 / 0.82 of their slots instead of 0.76 / 0.72)
    for shards, prompts, most in ((1, 1, 16), (8, 1, 8), (1, 2, 26), (8, 2, 12)):
        rng = np.random.default_rng(0)
        seen = collections.Counter()
        for _ in range(200):
            lengths = np.minimum(rng.lognormal(np.log(90), 0.75, 64).astype(int) + 1, 512)
            seen[choose_layout([lengths], 8, int(lengths.max()), 512, shards, prompt_len=384, key_cost=5e-5,
                               max_prompts=prompts)] += 1
        print(f"{shards} shard(s), <= {prompts} prompts a row: {len(seen)} layouts in 200 steps, most used "
              f"{seen.most_common(3)}")
        assert len(seen) <= most
