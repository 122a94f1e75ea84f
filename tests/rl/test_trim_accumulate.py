"""Completions cut to the step's longest (bucketed) give the same loss and gradients as the padded ones;
on-device accumulation over micro-batches equals the full-batch step; compilations stay bounded."""
import jax
import numpy as np
import pytest

from jaxr1.rl.trim import completion_buckets, trimmed_length

G, TC = 4, 64


def test_buckets_bound_padding_and_count():
    b = completion_buckets(1024)
    assert b[0] == 16 and b[-1] == 1024 and len(b) <= 13
    assert all(y / x <= 1.5 for x, y in zip(b, b[1:]))
    assert trimmed_length(np.array([3, 17, 9]), 1024) == 24
    assert trimmed_length(np.array([1024]), 1024) == 1024 and trimmed_length(np.array([0]), 64) == 16


@pytest.fixture(scope="module")
def setup():
    from jaxr1.config import load_config
    from jaxr1.data import build_dataset
    from jaxr1.loading import load_policy
    from jaxr1.rl.learner import Learner
    cfg = load_config(None, ["model.path=tiny-random", "data.batch_size=2", f"rl.num_generations={G}",
                             f"rl.max_completion_length={TC}", "optim.lr=1e-2"])
    model, tok, ip, _ = load_policy(cfg.model, cfg.data)
    batch = next(iter(build_dataset(cfg.data, tok, ip)))
    rng = np.random.default_rng(0)
    lengths = np.array([5, 19, 11, 2, 7, 20, 1, 13])            # all stop well before TC
    tokens = rng.integers(10, 500, (2 * G, TC)).astype(np.int32)
    return cfg, model, Learner, batch, tokens, lengths


def fresh(model):
    """A copy of the model's arrays: the learner's update donates its parameter buffers."""
    from flax import nnx
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), state))


def micro_batches(cfg, model, batch, tokens, lengths, t, n_mb):
    from jaxr1.rl.learner import MicroBatch
    from jaxr1.models.inputs import model_inputs
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    adv = np.linspace(-1, 1, 2 * G).astype(np.float32)
    per = 2 * G // n_mb
    out = []
    for c, chunk in enumerate(batch.split(n_mb)):
        inputs, deltas = model_inputs(model.config, chunk)
        rows = slice(c * per, (c + 1) * per)
        out.append(MicroBatch(inputs, deltas, tokens[rows, :t], mask[rows], adv[rows]))
    return out, mask


def test_trimmed_step_equals_padded_step(setup):
    from jaxr1.rl.losses import compute_loss_normalizer
    cfg, model, Learner, batch, tokens, lengths = setup
    learner = Learner(model, cfg.rl, cfg.optim, 10)
    params = learner.init(fresh(model)).params
    results = []
    for t in (TC, trimmed_length(lengths, TC)):
        (mb,), mask = micro_batches(cfg, model, batch, tokens, lengths, t, 1)
        norm = float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation))
        g, m, logp = learner.grads(params, mb, norm)
        results.append((jax.device_get(g), float(m["loss"]), np.asarray(logp)[:, :24] * mask[:, :24]))
    (g_full, loss_full, lp_full), (g_cut, loss_cut, lp_cut) = results
    assert trimmed_length(lengths, TC) == 24
    np.testing.assert_allclose(loss_cut, loss_full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lp_cut, lp_full, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_cut)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_accumulated_micro_batches_equal_the_full_batch(setup):
    # Gradients, not parameters after an Adam step: Adam divides by sqrt(v), which magnifies the float
    # reassociation of a sum in split order for near-zero gradients.
    from jaxr1.rl.losses import compute_loss_normalizer
    cfg, model, Learner, batch, tokens, lengths = setup
    learner = Learner(model, cfg.rl, cfg.optim, 10)
    state = learner.init(fresh(model))
    (full,), mask = micro_batches(cfg, model, batch, tokens, lengths, 24, 1)
    halves, _ = micro_batches(cfg, model, batch, tokens, lengths, 24, 2)
    norm = float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation))
    g_full, m_full, _ = learner.grads(state.params, full, norm)
    g, m, _ = learner.grads(state.params, halves[0], norm)
    g, m, _ = learner.accumulate(state.params, learner.frozen, halves[1], norm, g, m)
    assert float(m["loss"]) == pytest.approx(float(m_full["loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(g_full)), jax.tree.leaves(jax.device_get(g))):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    _, out, _ = learner.update(state, halves, norm)   # the driver: sums on the device, one host sync
    assert out["loss"] == pytest.approx(float(m_full["loss"]), rel=1e-5) and np.isfinite(out["grad_norm"])


def test_compilations_follow_buckets_not_steps(setup):
    from jaxr1.rl.losses import compute_loss_normalizer
    cfg, model, Learner, batch, tokens, _ = setup
    learner = Learner(model, cfg.rl, cfg.optim, 10)
    params = learner.init(fresh(model)).params
    before = Learner.grads_fn._cache_size()
    seen = set()
    for longest in (3, 9, 14, 17, 22, 30, 40, 47, 60, 64, 5, 33):   # twelve steps of varying lengths
        lengths = np.minimum(np.arange(1, 2 * G + 1) * longest // (2 * G) + 1, longest)
        t = trimmed_length(lengths, TC)
        seen.add(t)
        (mb,), mask = micro_batches(cfg, model, batch, tokens, lengths, t, 1)
        learner.grads(params, mb, float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation)))
    assert seen == {16, 24, 32, 48, 64}
    assert Learner.grads_fn._cache_size() - before == len(seen)
