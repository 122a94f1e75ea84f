"""Worker readiness does not depend on when the pool is first used; dead workers are restarted; a pool whose
workers cannot start says why."""
import os
import signal
import time

import pytest

from jaxr1.rewards import RewardScorer, WorkerPool
from jaxr1.rewards import pool as pool_mod
from tests.rewards import helpers


def _wait_ready(p, timeout=120):
    p.wait_ready(timeout)
    deadline = time.monotonic() + timeout
    while not all(w.ready for w in p._workers) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_first_use_long_after_start_up(monkeypatch):
    # The reported failure: scoring first called more than STARTUP_TIMEOUT_S after the pool was made (a real
    # first step compiles and samples for minutes) failed with "workers failed to start".
    monkeypatch.setattr(pool_mod, "STARTUP_TIMEOUT_S", 15.0)
    with RewardScorer([("accuracy", 1.0, {})], num_workers=2) as scorer:
        time.sleep(18.0)
        out = scorer.score(["<answer>3</answer>"], [{"answer": "3"}])
    assert out.per_function["accuracy"].tolist() == [1.0]


@pytest.mark.slow
def test_first_use_after_125_seconds_with_the_real_timeout():
    with RewardScorer([("accuracy", 1.0, {})], num_workers=2) as scorer:
        time.sleep(125.0)
        out = scorer.score(["<answer>3</answer>"], [{"answer": "3"}])
    assert out.per_function["accuracy"].tolist() == [1.0]


def test_dead_idle_workers_are_restarted():
    with WorkerPool(2) as p:
        _wait_ready(p)
        for w in p._workers:
            os.kill(w.proc.pid, signal.SIGKILL)
        time.sleep(3 * pool_mod.MONITOR_PERIOD_S)
        assert p.restarts >= 2
        assert [r.value for r in p.run(helpers.square, [(i,) for i in range(6)], timeout_s=60.0)] == \
               [i * i for i in range(6)]


def test_workers_that_cannot_start_report_the_cause(monkeypatch):
    monkeypatch.setattr(pool_mod, "MAX_START_FAILURES", 1)
    with WorkerPool(1) as p:
        os.kill(p._workers[0].proc.pid, signal.SIGKILL)   # long before its imports finish
        results = p.run(helpers.square, [(2,)], timeout_s=30.0)
        assert results[0].status == "error"
        assert "exited with code -9 (SIGKILL) before it was ready" in results[0].error, results[0].error
        with pytest.raises(RuntimeError, match="failed to start: worker exited"):
            p.wait_ready(1.0)
