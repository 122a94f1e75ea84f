"""The GRPO step driven directly, with a fake rollout (fixed tokens) and a fake scorer: micro-batching,
num_iterations, freeze_vision, non-finite gradients, immutability of its inputs, DAPO refills and their seeds."""
from concurrent.futures import Future

import jax
import numpy as np
import pytest

from jaxr1.rl.step import MAX_SEED_ROUNDS, StepContext, grpo_step, rollout_seed

G, TC, B = 4, 16, 2
LENGTHS = np.array([5, 12, 3, 16, 7, 9, 1, 14])
BASE = ["model.path=tiny-random", f"data.batch_size={B}", f"rl.num_generations={G}",
        f"rl.max_completion_length={TC}", "optim.lr=1e-3"]


class FakeRollout:
    """Fixed completions whatever the parameters; records the seeds it was called with."""

    def __init__(self):
        self.seeds = []

    def __call__(self, params, batch, seed):
        from jaxr1.rl.rollout import Rollout
        self.seeds.append(seed)
        rng = np.random.default_rng(len(self.seeds))
        rows = batch.input_ids.shape[0] * G
        tokens = rng.integers(10, 500, (rows, TC)).astype(np.int32)
        lengths = LENGTHS[:rows].copy()
        tokens[np.arange(TC)[None] >= lengths[:, None]] = 0
        return Rollout(tokens, lengths, np.zeros((rows, TC), np.float32), np.zeros(rows, np.int32),
                       [f"{seed}/{i}" for i in range(rows)])


class FakeScorer:
    """`rewards(call_index, n) -> totals`; counts the rows it scores."""

    def __init__(self, rewards=lambda call, n: np.linspace(0, 1, n)):
        self.rewards, self.calls, self.rows_scored = rewards, 0, 0

    def score(self, completions, examples, **ctx):
        from jaxr1.rewards.scorer import RewardResult
        n = len(completions)
        total = np.asarray(self.rewards(self.calls, n), np.float32)
        self.calls += 1
        self.rows_scored += n
        return RewardResult({"accuracy": total, "format": np.ones(n, np.float32)}, total, {"timeouts": 0})

    def submit(self, *args, **kw):
        f = Future()
        f.set_result(self.score(*args, **kw))
        return f


@pytest.fixture(scope="module")
def base():
    from jaxr1.config import load_config
    from jaxr1.data import build_dataset
    from jaxr1.loading import load_policy
    cfg = load_config(None, BASE)
    model, tok, ip, _ = load_policy(cfg.model, cfg.data)
    it = iter(build_dataset(cfg.data, tok, ip))
    return cfg, model, [next(it) for _ in range(4)]


def fresh(model):
    """A copy of the model's arrays: the update donates the state's buffers."""
    from flax import nnx
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), state))


def make(cfg, model, *overrides):
    from jaxr1.config import load_config
    from jaxr1.rl.learner import Learner
    if overrides:
        cfg = load_config(None, [*BASE, *overrides])
    learner = Learner(model, cfg.rl, cfg.optim, 10, freeze_vision=cfg.model.freeze_vision)
    return cfg, learner


def ctx_for(cfg, learner, batches=(), **kw):
    it = iter(batches)
    kw.setdefault("rollout", FakeRollout())
    kw.setdefault("scorer", FakeScorer())
    return StepContext(cfg, learner, next_batch=lambda: next(it), **kw)


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def learner(base):
    cfg, model, _ = base
    return make(cfg, model)


def test_one_and_two_micro_batches_give_the_same_parameters(base, learner):
    cfg, model, batches = base
    cfg, ln = learner
    out = []
    for n_mb in (1, 2):
        state, metrics, _ = grpo_step(ln.init(fresh(model)), batches[0], ctx_for(cfg, ln, micro_batches=n_mb))
        out.append((host(state.params), metrics))
    (p1, m1), (p2, m2) = out
    before = host(ln.init(fresh(model)).params)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(before)))
    assert moved > 0.5 * cfg.optim.lr
    # Adam's first step is lr * g / (|g| + eps): the float reassociation of the split sum (~1e-7 relative;
    # the two splits also pack their completions into different rows) moves the update of a gradient within
    # a few eps of zero by a fraction of lr (1 of 131072 elements here, by ~1e-2 lr); the gradients themselves
    # agree to float precision (grad_norm, below). So: all but 1e-4 of the elements within 1e-2 lr, none
    # beyond the 2 lr an Adam step can differ by.
    diff = np.concatenate([np.abs(b - a).ravel() for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2))])
    assert (diff > 1e-2 * cfg.optim.lr).mean() <= 1e-4 and diff.max() <= 2 * cfg.optim.lr, diff.max()
    for k in ("train/loss", "train/grad_norm", "train/entropy"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-5, abs=1e-7), k
    assert m1.keys() == m2.keys()


def test_metrics_keys(base, learner):
    cfg, model, batches = base
    cfg, ln = learner
    state, m, record = grpo_step(ln.init(fresh(model)), batches[0], ctx_for(cfg, ln))
    for k in ("reward/total_mean", "reward/total_std", "reward/accuracy", "reward/format", "accuracy", "format_rate",
              "completion/length_mean", "completion/length_max", "completion/truncated_frac",
              "completion/trained_length", "rl/dynamic_sampling_refilled_groups", "rl/zero_std_frac",
              "rl/sampler_trainer_logprob_gap", "rl/sampler_trainer_logprob_gap_max", "optim/lr", "time/sample_s",
              "time/reward_s", "time/train_s", "time/step_s", "throughput/tokens_per_s", "reward_stats/timeouts",
              "train/loss", "train/grad_norm", "train/clip_frac", "train/entropy", "train/ratio_mean",
              "train/skipped_updates"):
        assert k in m, k
    assert m["completion/trained_length"] == 16 and int(state.step) == 1
    assert len(record.rollout.texts) == B * G and record.batch.input_ids.shape[0] == B


def test_num_iterations_ratio_and_clipping(base):
    cfg, model, batches = base
    cfg, ln = make(cfg, model, "rl.num_iterations=2", "optim.lr=0.05")
    seen = []

    class Spy:   # the learner, recording each update's metrics
        def __getattr__(self, name):
            return getattr(ln, name)

        def update(self, *args):
            out = ln.update(*args)
            seen.append(out[1])
            return out

    _, metrics, _ = grpo_step(ln.init(fresh(model)), batches[0], ctx_for(cfg, Spy()))
    first, second = seen
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and first["clip_frac"] == 0.0
    assert second["clip_frac"] > 0 and abs(second["ratio_mean"] - 1) > 1e-3
    assert metrics["train/clip_frac"] == second["clip_frac"]   # the last pass's metrics are logged


def test_freeze_vision_leaves_the_vision_tower_bit_identical(base):
    cfg, model, batches = base
    cfg, ln = make(cfg, model, "model.freeze_vision=true")
    state = ln.init(fresh(model))
    before = host(state.params)
    state, _, _ = grpo_step(state, batches[0], ctx_for(cfg, ln))
    after = host(state.params)
    assert jax.tree.leaves(before["visual"]) and all(np.array_equal(a, b) for a, b in
                                    zip(jax.tree.leaves(before["visual"]), jax.tree.leaves(after["visual"])))
    lm = lambda p: jax.tree.leaves(p["language_model"])
    assert any(not np.array_equal(a, b) for a, b in zip(lm(before), lm(after)))


def test_non_finite_gradient_skips_the_update_and_counts_it(base, learner):
    cfg, model, batches = base
    cfg, ln = learner
    state = ln.init(fresh(model))
    before = host(state.params)
    nan = FakeScorer(lambda call, n: np.where(np.arange(n) == 1, np.nan, np.linspace(0, 1, n)))
    state, metrics, _ = grpo_step(state, batches[0], ctx_for(cfg, ln, scorer=nan))
    assert int(state.skipped_updates) == 1 and metrics["train/skipped_updates"] == 1.0 and int(state.step) == 1
    assert not np.isfinite(metrics["train/grad_norm"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(host(state.params))))
    state, metrics, _ = grpo_step(state, batches[1], ctx_for(cfg, ln))   # a finite one applies, count stays
    assert int(state.skipped_updates) == 1 and int(state.step) == 2 and np.isfinite(metrics["train/grad_norm"])


def test_the_step_does_not_mutate_its_inputs(base, learner):
    import copy
    cfg, model, batches = base
    cfg, ln = learner
    batch = batches[0]
    snapshot = copy.deepcopy(batch)
    state = ln.init(fresh(model))
    fields = dict(vars(state))
    new, _, _ = grpo_step(state, batch, ctx_for(cfg, ln, micro_batches=2))
    assert new is not state and all(getattr(state, k) is v for k, v in fields.items())
    for k, v in vars(snapshot).items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(getattr(batch, k), v), k
        else:
            assert getattr(batch, k) == v, k


def test_learner_update_returns_old_logprobs_instead_of_writing_them(base, learner):
    import dataclasses

    from jaxr1.rl.learner import MicroBatch
    from jaxr1.models.inputs import model_inputs
    cfg, model, batches = base
    cfg, ln = learner
    inputs, deltas = model_inputs(ln.model_config, batches[0])
    mask = (np.arange(TC)[None] < LENGTHS[:, None]).astype(np.int32)
    adv = np.linspace(-1, 1, B * G, dtype=np.float32)
    mb = MicroBatch(inputs, deltas, np.full((B * G, TC), 11, np.int32), mask, adv)
    state = ln.init(fresh(model))
    expected = np.asarray(ln.logprobs(state.params, mb))
    _, _, (logprobs,) = ln.update(state, [mb], float(mask.sum()))
    assert mb.old_logprobs is None
    np.testing.assert_allclose(np.asarray(logprobs) * mask, expected * mask, rtol=1e-5, atol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mb.old_logprobs = logprobs


def test_rollout_seeds_never_collide():
    for run_seed in (0, 1, 4321):
        seeds = [rollout_seed(run_seed, step, r) for step in range(0, 3000) for r in range(8)]
        assert len(set(seeds)) == len(seeds)
    assert rollout_seed(0, 5) == 5   # round 0 is the seed a step always had (seed * 1_000_003 + step)
    top = [rollout_seed(7, s, r) for s in ((1 << 24) - 2, (1 << 24) - 1) for r in (0, MAX_SEED_ROUNDS - 1)]
    assert len(set(top)) == len(top)
    with pytest.raises(ValueError):
        rollout_seed(0, 1, MAX_SEED_ROUNDS)


def test_dynamic_sampling_refills_scores_each_row_once_and_uses_fresh_seeds(base, learner):
    from jaxr1.config import load_config
    _, model, batches = base
    _, ln = learner
    cfg = load_config(None, [*BASE, "rl.dynamic_sampling=true", "rl.max_refill_rounds=2", "seed=3"])
    # The step's own batch has zero-variance groups only; the first refill batch is informative.
    scorer = FakeScorer(lambda call, n: np.zeros(n) if call == 0 else np.linspace(0, 1, n))
    rollout = FakeRollout()
    state = ln.init(fresh(model))
    for _ in range(3):   # steps 1..3 (the learner's state counts them)
        step = int(state.step) + 1
        scorer.calls = scorer.rows_scored = 0
        n_seeds = len(rollout.seeds)
        state, metrics, record = grpo_step(state, batches[0], ctx_for(cfg, ln, batches[1:], rollout=rollout,
                                                                     scorer=scorer))
        assert rollout.seeds[n_seeds:] == [rollout_seed(3, step, 0), rollout_seed(3, step, 1)]
        assert scorer.rows_scored == 2 * B * G            # the step's batch and one refill: each row once
        assert metrics["rl/dynamic_sampling_refilled_groups"] == B
        assert record.batch.reward_inputs == batches[1].reward_inputs   # the informative groups were kept
        assert record.rewards.total.tolist() == np.linspace(0, 1, B * G, dtype=np.float32).tolist()
        assert record.rollout.texts[0].startswith(f"{rollout_seed(3, step, 1)}/")
    step_seeds = {rollout_seed(3, s, 0) for s in range(0, 100_000)}
    refill_seeds = [s for s in rollout.seeds if s not in {rollout_seed(3, k, 0) for k in (1, 2, 3)}]
    assert len(refill_seeds) == 3 and not step_seeds & set(refill_seeds)


def test_packed_step_equals_unpacked_step(base, learner, monkeypatch):
    """grpo_step with its micro-batches packed (forced: the test's step is below MIN_PACK_SLOTS) gives the
    unpacked step's loss, gradient norm and sampler/trainer gap."""
    import jaxr1.rl.step as step_mod
    cfg, model, batches = base
    cfg, ln = learner
    out = []
    for slots in (10**9, 0):
        monkeypatch.setattr(step_mod, "MIN_PACK_SLOTS", slots)
        _, metrics, _ = grpo_step(ln.init(fresh(model)), batches[0], ctx_for(cfg, ln))
        out.append(metrics)
    plain, packed = out
    assert packed["completion/train_token_fill"] > plain["completion/train_token_fill"]
    for k in ("train/loss", "train/grad_norm", "train/entropy", "rl/sampler_trainer_logprob_gap"):
        assert packed[k] == pytest.approx(plain[k], rel=1e-4, abs=1e-6), k


def test_schedules_make_the_first_update_count():
    """optim.schedule=cosine with warmup_steps=0 starts at lr (the embedded default: a 0 there made update 1
    a no-op, so 2-step runs never moved the weights); with warmup it rises from 0 over warmup_steps."""
    from jaxr1.config import OptimConfig
    from jaxr1.rl.learner import make_schedule
    lr = 1e-4
    cosine = make_schedule(OptimConfig(lr=lr, schedule="cosine"), 10)
    assert float(cosine(0)) == pytest.approx(lr) and float(cosine(10)) == pytest.approx(0.0, abs=1e-12)
    assert float(make_schedule(OptimConfig(lr=lr), 10)(0)) == pytest.approx(lr)
    warm = make_schedule(OptimConfig(lr=lr, schedule="cosine", warmup_steps=2), 10)
    assert [float(warm(i)) for i in range(3)] == pytest.approx([0.0, lr / 2, lr])
