"""The sampler under a mesh: sharded weights and a data-sharded batch give the single-device result."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sharded_params_and_batch_match_unsharded():
    # A fresh process: the host device count must be set before jax initialises.
    proc = subprocess.run([sys.executable, "-m", "tests.sampling.sharded_run", "Auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok,") == 1, proc.stdout
