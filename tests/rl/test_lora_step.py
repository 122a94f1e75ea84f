"""The GRPO step with LoRA adapters: only adapters train (the base is bit-identical after two steps), the
reference log-probs are the base model's, the optimizer holds adapter moments only, and the sampler's
log-probs match the update's (unmerged adapters on both sides)."""
import jax
import numpy as np
import pytest

from tests.rl.test_step import BASE, ctx_for, fresh, host
from tests.rl.test_trim_accumulate import micro_batches

LORA = ["lora.rank=4", "lora.alpha=8", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def setup():
    from jaxr1.config import load_config
    from jaxr1.data import build_dataset
    from jaxr1.loading import load_policy
    from jaxr1.models.lora import add_lora
    cfg = load_config(None, [*BASE, *LORA])
    model, tok, ip, _ = load_policy(cfg.model, cfg.data)
    it = iter(build_dataset(cfg.data, tok, ip))
    adapted = add_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target=cfg.lora.target)
    return cfg, model, adapted, [next(it) for _ in range(2)]


def learner_for(cfg, model):
    from jaxr1.rl.learner import Learner
    return Learner(model, cfg.rl, cfg.optim, 10)


def test_two_steps_change_only_the_adapters(setup):
    from jaxr1.rl.step import grpo_step
    cfg, model, adapted, batches = setup
    ln = learner_for(cfg, adapted)
    state = ln.init(fresh(adapted))
    names = {str(k[-2].key) for k, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert ln.lora and names and all(n.endswith(("_lora_a", "_lora_b")) for n in names)
    opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert opt_leaves <= 2 * sum(x.size for x in jax.tree.leaves(state.params)) + 10   # Adam: mu, nu of adapters
    base = host(ln.frozen)
    before = host(state.params)
    for batch in batches:
        state, metrics, _ = grpo_step(state, batch, ctx_for(cfg, ln))
    assert int(state.step) == 2 and np.isfinite(metrics["train/loss"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(host(ln.frozen))))
    after = host(state.params)
    moved = {n for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after))
             if not np.array_equal(a, b) for n in [str(k[-2].key)]}
    assert {n for n in moved if n.endswith("_lora_b")} == {n for n in names if n.endswith("_lora_b")}
    # the exported model is the base plus the merged adapters: kernels moved, everything else bit-identical
    from flax import nnx
    exported = nnx.to_pure_dict(nnx.state(ln.export_model(state.params), nnx.Param))
    plain = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    layers = exported["language_model"]["layers"]
    assert not np.array_equal(np.asarray(layers["q_kernel"]), np.asarray(plain["language_model"]["layers"]["q_kernel"]))
    assert np.array_equal(np.asarray(layers["q_bias"]), np.asarray(plain["language_model"]["layers"]["q_bias"]))
    assert np.array_equal(np.asarray(exported["visual"]["blocks"]["qkv_kernel"]),
                          np.asarray(plain["visual"]["blocks"]["qkv_kernel"]))


def test_reference_logprobs_are_the_base_models(setup):
    from jaxr1.rl.step import grpo_step
    cfg, model, adapted, batches = setup
    ln, full = learner_for(cfg, adapted), learner_for(cfg, model)
    state = ln.init(fresh(adapted))
    state, _, _ = grpo_step(state, batches[0], ctx_for(cfg, ln))   # adapters non-zero now
    rng = np.random.default_rng(0)
    rows = batches[1].input_ids.shape[0] * cfg.rl.num_generations
    tokens = rng.integers(10, 500, (rows, 16)).astype(np.int32)
    (mb,), _ = micro_batches(cfg, model, batches[1], tokens, np.full(rows, 12), 16, 1)
    ref = np.asarray(ln.logprobs(ln.reference_params(state), mb))
    base = np.asarray(full.logprobs(full.init(fresh(model)).params, mb))
    policy = np.asarray(ln.logprobs(state.params, mb))
    np.testing.assert_allclose(ref, base, atol=1e-6, rtol=0)
    assert np.abs(policy - base).max() > 1e-4                    # the trained adapters do move the policy
    # the reference is zero adapters beside the shared base: no second copy of the model
    assert sum(x.size for x in jax.tree.leaves(ln.reference_params(state))) == \
        sum(x.size for x in jax.tree.leaves(state.params))


def test_lora_sampler_matches_the_update_and_beta_trains(setup):
    """A real rollout (the sampler on the adapted policy) and rl.beta > 0: the first update's log-probs equal
    the sampler's, and the KL term is 0 at step 1 (policy = reference) and positive after."""
    from jaxr1.config import load_config
    from jaxr1.data.text import eos_ids
    from jaxr1.loading import load_policy
    from jaxr1.rl.rollout import sampler_rollout
    from jaxr1.rl.step import grpo_step
    cfg, model, adapted, batches = setup
    cfg = load_config(None, [*BASE, *LORA, "rl.beta=0.1"])
    _, tok, _, _ = load_policy(cfg.model, cfg.data)
    ln = learner_for(cfg, adapted)
    state = ln.init(fresh(adapted))
    roll = sampler_rollout(ln, cfg.rl, tokenizer=tok, eos_token_ids=eos_ids(tok), compute_dtype="float32")
    ctx = ctx_for(cfg, ln, rollout=roll, ref_params=ln.reference_params(state))
    kls = []
    for batch in batches:
        state, metrics, _ = grpo_step(state, batch, ctx)
        assert metrics["rl/sampler_trainer_logprob_gap_max"] < 1e-4
        kls.append(metrics["train/kl"])
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[1] > 0
