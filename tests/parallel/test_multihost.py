"""Two processes on localhost (jax.distributed, gloo CPU collectives, 4 devices each) match one 8-device process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "parallel", "multihost_run.py")


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(run):
    return np.array([(r["train/loss"], r["train/grad_norm"], r["reward/total_mean"])
                     for r in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "train/loss" in r])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    from safetensors.numpy import load_file
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    r = subprocess.run([sys.executable, SCRIPT, one, "8", "8"], env=_env(), capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, SCRIPT, two, "4", "4", str(i), "2", str(port)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=1800)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    assert "process 1 of 2" in logs[1] or "process 1 of 2" in logs[0]
    np.testing.assert_allclose(_losses(two), _losses(one), atol=1e-5, rtol=1e-5)
    a, b = load_file(os.path.join(one, "hf", "model.safetensors")), load_file(os.path.join(two, "hf", "model.safetensors"))
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    print(f"2 processes vs 1: max |param diff| {worst:.2e}")
    assert worst <= 1e-5
    # Both hosts wrote the checkpoint; host 1's data iterator state is in it under its own index.
    meta = json.load(open(os.path.join(two, "checkpoints", "2", "meta", "metadata")))
    assert len(meta["data"]) == 2
