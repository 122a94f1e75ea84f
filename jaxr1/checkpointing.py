"""Checkpoints on orbax. A model checkpoint holds `config.json` (HF layout), the tokenizer / image processor
files, and `params/` (an orbax checkpoint of the model's parameters as a plain nested dict); a training
checkpoint (TrainCheckpointer) holds the learner state. Which model a path holds is jaxr1.loading's to say."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxr1.models import build, config_from_dir
from jaxr1.models.hf_files import CheckpointError, copy_tokenizer_files
from jaxr1.parallel.rules import place
from jaxr1.run_dir import CHECKPOINTS

PARAMS_DIR = "params"
log = logging.getLogger("jaxr1.checkpoint")


def save_model(model, out_dir: str, *, source_dir: str | None = None, primary: bool = True) -> None:
    """Multi-host: every process calls this (orbax writes the shards); `primary` writes the other files."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    dtype = "float32" if model.dtype == jnp.float32 else "bfloat16"
    if primary:
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(model.config.to_hf_dict(dtype), f, indent=2)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, PARAMS_DIR), nnx.to_pure_dict(nnx.state(model, nnx.Param)), force=True)
        ckptr.wait_until_finished()
    if source_dir and primary:
        copy_tokenizer_files(source_dir, out_dir)


def save_model_files(model_config, dtype: str, source_dir: str, out_dir: str) -> None:
    """config.json + tokenizer/processor files: what a bare training checkpoint needs beside it to load."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model_config.to_hf_dict(dtype), f, indent=2)
    copy_tokenizer_files(source_dir, out_dir)


def restore_params(step_dir: str, abstract_params):
    """The parameters alone (the optimizer state is not read) of a training checkpoint's state, as
    `abstract_params` gives them (shapes, dtypes), restored whole on one device and cast to those dtypes."""
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])   # saved sharded; restored whole, on one device
    target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract_params)}
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.join(step_dir, "state"),
                                 args=ocp.args.PyTreeRestore(target, partial_restore=True,
                                                             restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
    return jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), restored["params"], target["params"])


def abstract_model(model_dir: str, dtype: str | None):
    """The model of a directory's config.json, shapes only (dtype: as saved unless given)."""
    cfg = config_from_dir(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    saved_dtype = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    return nnx.eval_shape(lambda: build(cfg, dtype or saved_dtype))


def is_model_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, PARAMS_DIR)) and os.path.isfile(os.path.join(path, "config.json"))


def load_model(ckpt_dir: str, dtype: str | None = None):
    """Restore a model saved by `save_model` (dtype: as saved unless given)."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: no such directory")
    if not is_model_checkpoint(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: not a jaxr1 checkpoint (a model checkpoint has config.json and "
                              f"{PARAMS_DIR}/; a training checkpoint is RUN/checkpoints/STEP)")
    model = abstract_model(ckpt_dir, dtype)
    abstract = nnx.state(model, nnx.Param)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.abspath(os.path.join(ckpt_dir, PARAMS_DIR)), target)
    nnx.replace_by_pure_dict(abstract, restored)
    nnx.update(model, abstract)
    return model


def _state_tree(state) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
            "skipped_updates": state.skipped_updates}


def _counter(value: int, like):
    """A counter of an old checkpoint's JSON item, placed as the state's counter `like` is."""
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jnp.asarray(value, jnp.int32)
    return place(np.asarray(value, np.int32), sharding)


class TrainCheckpointer:
    """Training state under `<run_dir>/checkpoints/<step>/`: the LearnerState (parameters, optimizer state,
    step and skipped-update counters; orbax, async, written by all hosts) and a JSON item (step, data iterator
    state, eval results). orbax writes each step to a temporary directory and renames it when complete, so a
    crash mid-save leaves the previous step intact; a step that fails to restore (corrupted) is reported and
    the one before it is used. Checkpoints of the earlier layout ({params, opt_state}, counters in the JSON
    item) still restore."""

    def __init__(self, run_dir: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(run_dir), CHECKPOINTS)
        self._preemption_error_logged = False
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                                 enable_async_checkpointing=async_save,
                                                                 cleanup_tmp_directories=True))

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> None:
        """state: a LearnerState."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)),
                                                        meta=ocp.args.JsonSave(meta)), force=force)

    def _saved_keys(self, step: int) -> set | None:
        try:
            return set(self.manager.item_metadata(step)["state"].keys())
        except Exception:  # noqa: BLE001 - no readable metadata: restore() says what is wrong
            return None

    def restore(self, step: int, abstract_state) -> tuple[int, object, dict]:
        """(step, LearnerState, meta); abstract_state: a LearnerState giving shapes, dtypes and shardings."""
        target = _state_tree(abstract_state)
        legacy = self._saved_keys(step) == {"params", "opt_state"}
        if legacy:
            target = {k: target[k] for k in ("params", "opt_state")}
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        tree, meta = out["state"], out["meta"]
        if legacy:
            tree = {**tree, "step": _counter(meta.get("step", step), abstract_state.step),
                    "skipped_updates": _counter(meta.get("skipped_updates", 0), abstract_state.skipped_updates)}
        return step, dataclasses.replace(abstract_state, **tree), meta

    def delete_after(self, step: int) -> None:
        """Remove checkpoints past `step` (a run resumed from an earlier step replaces them), saying which."""
        later = [s for s in self.manager.all_steps() if s > step]
        if later:
            log.warning("resuming from step %d: removing the later checkpoints %s of the replaced branch", step, later)
            for s in later:
                self.manager.delete(s)

    def restore_latest(self, abstract_state) -> tuple[int, object, dict] | None:
        """(step, state, meta) of the newest restorable step, or None when there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract_state)
            except Exception as e:  # corrupted or partial: fall back to the previous step
                log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the previous one",
                            step, self.directory, type(e).__name__, str(e)[:300])
        return None

    def reached_preemption(self, step: int) -> bool:
        """True on every host once the runtime has a preemption notice (TPU maintenance / SIGTERM sync point)."""
        try:
            return bool(self.manager.reached_preemption(step))
        except Exception as e:  # noqa: BLE001 - must not stop training; the SIGTERM handler still saves
            if not self._preemption_error_logged:
                self._preemption_error_logged = True
                log.warning("preemption check failed at step %d (%s: %s); maintenance events will not reach the "
                            "sync point (later failures not logged)", step, type(e).__name__, e)
            return False

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
