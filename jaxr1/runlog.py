"""A run's logs: metrics.jsonl + TensorBoard (the same scalars) + samples.jsonl, written by process 0 only."""
from __future__ import annotations

import json
import os
import re

import numpy as np


class RunLog:
    def __init__(self, run_dir: str, enabled: bool = True, *, first_step: int = 0):
        """first_step: the step this process starts at; TensorBoard drops events a resumed run repeats."""
        self.enabled = enabled
        if not enabled:
            return
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

    def sample_rows(self, step: int, rows: list[dict]) -> None:
        if self.enabled:
            for r in rows:
                self.samples.write(json.dumps({"step": step, **r}, default=str) + "\n")
            self.samples.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.metrics.close()
            self.samples.close()
