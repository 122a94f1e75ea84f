"""A researcher's reruns, end to end in subprocesses: resume only a compatible run, from a chosen step; the
logs never repeat a step; eval of a run directory uses that run's settings; every training checkpoint
exports to an HF directory transformers loads; a second Ctrl-C aborts."""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# The embedded default made small; its system prompt and scenes differ from the schema's defaults, which is
# what made eval without the run's config score a different number.
ARGS = ["data.batch_size=2", "rl.num_generations=4", "rl.max_completion_length=16", "data.num_eval=8",
        "eval.batch_size=8", "eval.max_new_tokens=24", "save_every=1", "keep_checkpoints=5"]


def cli(module, *args, timeout=900):
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return p.returncode, p.stdout, p.stderr


def steps_logged(run):
    return [r["step"] for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("first") / "run")
    rc, out, err = cli("jaxr1.train", *ARGS, "steps=2", f"output_dir={d}")
    assert rc == 0, err[-3000:]
    return d


def test_before_eval_is_logged_at_step_zero(run):
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert rows[0]["step"] == 0 and "eval/accuracy" in rows[0]
    assert steps_logged(run)[:3] == [0, 1, 2]


def test_eval_of_the_run_directory_equals_the_runs_own_eval(run):
    rc, out, err = cli("jaxr1.eval", "--model", run)
    assert rc == 0, err[-3000:]
    after = [json.loads(l)["correct"] for l in open(os.path.join(run, "eval_after.jsonl"))]
    assert json.loads(out[out.index("{"):])["accuracy"] == pytest.approx(np.mean(after))
    assert "with the settings of the run" in err


def test_training_checkpoints_export_and_load_in_transformers(run, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    out = str(tmp_path / "hf1")
    rc, _, err = cli("jaxr1.convert", "to-hf", os.path.join(run, "checkpoints", "1"), out)
    assert rc == 0, err[-3000:]
    for name in os.listdir(out):   # readable by the group and others, as a shared model directory must be
        assert os.stat(os.path.join(out, name)).st_mode & (stat.S_IRGRP | stat.S_IROTH), name
    assert {"tokenizer_config.json", "preprocessor_config.json", "model.safetensors"} <= set(os.listdir(out))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 0
    final = os.path.join(run, "hf")
    assert all(os.stat(os.path.join(final, n)).st_mode & stat.S_IROTH for n in os.listdir(final))


def test_reruns_resume_only_what_they_should(run):
    # Same run, longer: resumes at step 2 and logs each step once.
    rc, out, err = cli("jaxr1.train", *ARGS, "steps=3", f"output_dir={run}")
    assert rc == 0 and "resumed from" in err, err[-3000:]
    assert steps_logged(run) == [0, 1, 2, 2, 3, 3]   # the final step twice: its row and the after-eval row
    # A different run into the same directory stops before touching it.
    before = open(os.path.join(run, "config.yaml")).read()
    rc, _, err = cli("jaxr1.train", *ARGS, "steps=3", "rl.temperature=0.7", f"output_dir={run}")
    assert rc == 2 and "rl.temperature: 1.0 -> 0.7" in err.strip().splitlines()[-1]
    assert open(os.path.join(run, "config.yaml")).read() == before
    # An explicit earlier step: the later checkpoints and log rows are replaced, not repeated.
    rc, _, err = cli("jaxr1.train", *ARGS, "steps=3", "resume=1", f"output_dir={run}")
    assert rc == 0 and "resumed from" in err and "step 1" in err, err[-3000:]
    assert steps_logged(run) == [0, 1, 2, 3, 3]
    # Starting over keeps the old run aside.
    rc, _, err = cli("jaxr1.train", *ARGS, "steps=1", "rl.temperature=0.7", "resume=never", f"output_dir={run}")
    assert rc == 0, err[-3000:]
    archived = [n for n in os.listdir(run) if n.startswith("replaced-")]
    assert len(archived) == 1 and os.path.isdir(os.path.join(run, archived[0], "checkpoints"))
    assert steps_logged(run) == [0, 1, 1]


def test_second_ctrl_c_aborts_and_no_accuracy_shown_without_an_accuracy_reward(tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "-m", "jaxr1.train", *ARGS, "steps=50", "data.num_eval=0",
                          "rewards.functions=[{name: 'tests.train.plugins:distinct_chars'}]", f"output_dir={out}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.time()
    while not (os.path.exists(metrics) and any(s >= 1 for s in steps_logged(out))):
        assert p.poll() is None and time.time() - t0 < 600
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    log = p.stdout.read()
    assert rc == 130, log[-3000:]
    assert "aborting without saving" in log
    assert "reward=" in log and "acc=" not in log
