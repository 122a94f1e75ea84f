"""A short GRPO run of the embedded tiny model: parameters change, metrics are finite, outputs are written."""
import json
import math
import os

import numpy as np
import pytest


def test_two_grpo_steps_change_params_and_keep_metrics_finite(tmp_path):
    from safetensors.numpy import load_file

    from jaxr1.assets import TINY_MODEL_DIR
    from jaxr1.train import main
    out = tmp_path / "run"
    rc = main(["model.path=tiny-random", "steps=2", "data.batch_size=2", "rl.num_generations=4",
               "rl.max_completion_length=12", "optim.lr=1e-3", "data.num_eval=4", "eval.batch_size=4",
               "eval.max_new_tokens=8", "sample_every=1", "rl.beta=0.01", f"output_dir={out}",
               "rewards.functions=[{name: format, weight: 1.0}, {name: accuracy, weight: 1.0},"
               " {name: 'tests.train.plugins:distinct_chars', weight: 1.0}]"])
    assert rc == 0
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for k, v in r.items():
            assert math.isfinite(v), (k, v)
        for k in ("reward/total_mean", "train/grad_norm", "train/kl", "rl/sampler_trainer_logprob_gap", "optim/lr",
                  "time/sample_s", "completion/length_mean", "train/entropy", "train/clip_frac"):
            assert k in r, k
    assert steps[0]["rl/sampler_trainer_logprob_gap"] < 1e-4
    assert os.path.isfile(out / "config.yaml") and os.path.getsize(out / "samples.jsonl") > 0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out))
    before, after = load_file(os.path.join(TINY_MODEL_DIR, "model.safetensors")), load_file(out / "hf" / "model.safetensors")
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert "model.embed_tokens.weight" in changed and any(k.startswith("visual.") for k in changed)
