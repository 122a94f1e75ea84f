"""A run's logs, written by process 0 only: metrics.jsonl, TensorBoard and (optionally) Weights & Biases get the
same scalars; samples.jsonl (and a wandb table) get the sampled completions."""
from __future__ import annotations

import json
import os
import re
import uuid

import numpy as np

from jaxr1.errors import UserError

WANDB_ID_FILE = "wandb_run_id"   # in run_dir: a resumed run continues the same wandb run
_TEXT_COLUMNS = ("prompt", "images", "completion", "answer")   # of the wandb samples table, after "step"
_NOT_REWARDS = (*_TEXT_COLUMNS, "row")   # every other numeric field of a sample row is a reward's value


class WandbError(UserError):
    """wandb is configured but not installed, or refuses to start (no API key for mode online)."""


class RunLog:
    def __init__(self, run_dir: str, enabled: bool = True, *, first_step: int = 0, wandb: dict | None = None):
        """first_step: the step this process starts at (> 0: a resumed run; TensorBoard drops the events it
        repeats). wandb: None (off) or {project, entity, name, mode, config, dir}; mode "disabled" is off too."""
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        if wandb and wandb.get("mode", "online") != "disabled":   # first: a missing wandb stops before any file
            self.wandb = _start_wandb(run_dir, wandb, resumed=first_step > 0)
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(run_dir, purge_step=first_step if first_step > 0 else None)
        self.metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.samples = open(os.path.join(run_dir, "samples.jsonl"), "a")

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items() if np.isscalar(v) or np.ndim(v) == 0}
        self.metrics.write(json.dumps({"step": step, **values}) + "\n")
        self.metrics.flush()
        for k, v in values.items():
            # TensorBoard tags allow [A-Za-z0-9_./-]; per-source names ("synthetic:counting:...@0") get "_".
            self.tb.add_scalar(re.sub(r"[^\w./-]", "_", k), v, step)
        if self.wandb is not None:
            # Calls with the same step (train metrics, then an eval) merge into one wandb history row.
            self.wandb.log(values, step=step)

    def sample_rows(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        for r in rows:
            self.samples.write(json.dumps({"step": step, **r}, default=str) + "\n")
        self.samples.flush()
        if self.wandb is not None and rows:
            self.wandb.log({"samples": _samples_table(step, rows)}, step=step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.metrics.close()
            self.samples.close()
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None


def require_wandb():
    """The wandb module, or a WandbError saying how to install it (a command can call this before loading a
    model, so a missing wandb fails in seconds, not after the load)."""
    try:
        import wandb
    except ImportError:
        raise WandbError('logging.wandb is set but wandb is not installed: pip install wandb '
                         '(or pip install -e ".[wandb]")') from None
    return wandb


def _start_wandb(run_dir: str, opts: dict, resumed: bool):
    wandb = require_wandb()
    id_path = os.path.join(run_dir, WANDB_ID_FILE)
    if resumed and os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip()
    else:   # a run that starts from step 0 (no checkpoint restored) is a new wandb run
        run_id = uuid.uuid4().hex[:12]
        with open(id_path, "w") as f:
            f.write(run_id + "\n")
    try:
        return wandb.init(project=opts.get("project"), entity=opts.get("entity"), name=opts.get("name"),
                          mode=opts.get("mode", "online"), config=opts.get("config"),
                          dir=opts.get("dir") or run_dir, id=run_id, resume="allow" if resumed else None)
    except wandb.errors.UsageError as e:   # e.g. no API key: the user's setup, not a bug
        raise WandbError(f"wandb: {e} (or logging.wandb.mode=offline, then wandb sync)") from None


def _samples_table(step: int, rows: list[dict]):
    import wandb
    rewards = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k not in _NOT_REWARDS and all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)]
    # Text columns as strings: wandb types a column by its values, and None or a list answer would not fit it.
    data = [[step, *("" if r.get(k) is None else str(r[k]) for k in _TEXT_COLUMNS),
             *(float(r[k]) if k in r else None for k in rewards)] for r in rows]
    return wandb.Table(columns=["step", *_TEXT_COLUMNS, *rewards], data=data)


def wandb_options(wandb_cfg, cfg_dict: dict, *, check: bool = True) -> dict | None:
    """RunLog's `wandb` argument from the config's logging.wandb (None: off); the resolved config (what
    config.yaml holds) becomes the wandb run config. check: fail now on a missing wandb, not after the model
    load (process 0 only: the others never start it)."""
    if not wandb_cfg.project or wandb_cfg.mode == "disabled":
        return None
    if check:
        require_wandb()
    return {"project": wandb_cfg.project, "entity": wandb_cfg.entity, "name": wandb_cfg.name,
            "mode": wandb_cfg.mode, "config": cfg_dict}
