"""The LearnerState (params, optimizer state, counters) saves and restores as one unit; checkpoints of the
earlier layout ({params, opt_state}, counters in the JSON item) still restore."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest


@pytest.fixture(scope="module")
def learner_and_state():
    from jaxr1.config import load_config
    from jaxr1.loading import load_policy
    from jaxr1.rl.learner import Learner
    cfg = load_config(None, ["model.path=tiny-random"])
    model, *_ = load_policy(cfg.model)
    learner = Learner(model, cfg.rl, cfg.optim, 10)
    return learner, learner.init(model)


def _same(a, b):
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_state_round_trips_as_a_unit(tmp_path, learner_and_state):
    from jaxr1.checkpointing import TrainCheckpointer
    learner, state = learner_and_state
    saved = dataclasses.replace(state, params=jax.tree.map(lambda x: x + 1, state.params),
                                step=jnp.asarray(7, jnp.int32), skipped_updates=jnp.asarray(2, jnp.int32))
    ckpt = TrainCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(7, saved, {"step": 7})
    step, restored, meta = ckpt.restore_latest(_target(state))
    ckpt.close()
    assert step == 7 and meta == {"step": 7} and type(restored) is type(state)
    assert int(restored.step) == 7 and int(restored.skipped_updates) == 2
    assert _same(restored.params, saved.params) and _same(restored.opt_state, saved.opt_state)


def test_checkpoint_of_the_earlier_layout_restores(tmp_path, learner_and_state):
    from jaxr1.checkpointing import TrainCheckpointer
    learner, state = learner_and_state
    ckpt = TrainCheckpointer(str(tmp_path), async_save=False)
    ckpt.manager.save(4, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": state.params, "opt_state": state.opt_state}),
        meta=ocp.args.JsonSave({"step": 4, "skipped_updates": 3})))
    ckpt.manager.wait_until_finished()
    step, restored, meta = ckpt.restore(4, _target(state))
    ckpt.close()
    assert step == 4 and int(restored.step) == 4 and int(restored.skipped_updates) == 3
    assert _same(restored.params, state.params)


def _target(state):
    """Shapes, dtypes and shardings of `state` with other values (the restore must read them from disk)."""
    return dataclasses.replace(state, params=jax.tree.map(jnp.zeros_like, state.params),
                               opt_state=jax.tree.map(jnp.zeros_like, state.opt_state))
