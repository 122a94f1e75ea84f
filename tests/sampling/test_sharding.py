"""The sampler under a mesh: sharded weights and a data-sharded batch give the single-device result; the
data-parallel sampler (mesh=) splits rows over data x fsdp."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sharded_params_and_batch_match_unsharded():
    # A fresh process: the host device count must be set before jax initialises.
    proc = subprocess.run([sys.executable, "-m", "tests.sampling.sharded_run", "Auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok,") == 1, proc.stdout


@pytest.mark.slow   # ~3 min: a subprocess on 8 forced devices
def test_data_parallel_sampler_rows_split_and_no_gather_in_decode_loop():
    """generate(..., mesh=) on 8 host devices (data=2, fsdp=4), fsdp-sharded weights: greedy and sampled tokens
    equal the single-device run, outputs and caches split by row, no all-gather in the decode loop bodies."""
    proc = subprocess.run([sys.executable, "-m", "tests.sampling.dp_run", "2", "4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("tokens equal the single-device run: ok") == 2, proc.stdout
