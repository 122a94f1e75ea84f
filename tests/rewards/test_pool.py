"""Worker pool and scorer: per-item timeouts kill hung items, the rest of the batch proceeds."""

import threading
import time

import numpy as np
import pytest

from jaxr1.rewards import RewardScorer, WorkerPool
from tests.rewards import helpers


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(2) as p:
        yield p


def test_run_in_order(pool):
    results = pool.run(helpers.square, [(i,) for i in range(20)], timeout_s=30.0)
    assert [r.value for r in results] == [i * i for i in range(20)]
    assert all(r.status == "ok" for r in results)


def test_hung_task_is_killed_and_the_batch_proceeds(pool):
    fns_args = [(0.0, 1), (60.0, 2), (0.0, 3), (0.0, 4)]  # the second would sleep a minute
    start = time.perf_counter()
    results = pool.run(helpers.sleep_then, fns_args, timeout_s=1.0)
    elapsed = time.perf_counter() - start
    assert [r.status for r in results] == ["ok", "timeout", "ok", "ok"]
    assert [r.value for r in results if r.status == "ok"] == [1, 3, 4]
    assert elapsed < 15.0  # the timeout, not the minute (slack for a loaded machine)
    # The killed worker was replaced: the pool still works.
    assert pool.run(helpers.square, [(3,)], timeout_s=30.0)[0].value == 9


def test_errors_are_reported_not_raised(pool):
    results = pool.run(helpers.boom, [(), ()], timeout_s=30.0)
    assert all(r.status == "error" and "boom" in r.error for r in results)


def test_fork_is_refused():
    with pytest.raises(ValueError, match="fork"):
        WorkerPool(1, context="fork")


def test_scorer_weights_stats_and_timeouts():
    specs = [
        ("format", 0.5, {}),
        ("accuracy", 1.0, {}),
        ("overlong", 1.0, {"soft_cache_length": 32}),
        ("tests.rewards.helpers:hanging_reward", 2.0, {}),
        ("tests.rewards.helpers:positional_only_reward", 1.0, {}),
    ]
    comps = [
        "<think>t</think><answer>3</answer>",
        "<think>t</think><answer>4</answer>",
        "<answer>hang</answer>",
        "<think>t</think><answer>\\frac{</answer>",
    ]
    exs = [{"answer": "3"}] * 4
    lengths = np.array([10, 20, 120, 128])
    with RewardScorer(specs, num_workers=2, timeout_s=1.0) as scorer:
        start = time.perf_counter()
        fut = scorer.submit(comps, exs, completion_lengths=lengths, max_completion_length=128)
        submitted = time.perf_counter() - start
        result = fut.result(timeout=60)
    assert submitted < 0.5  # submit returns at once
    pf = result.per_function
    assert pf["format"].tolist() == [1, 1, 0, 1]
    assert pf["accuracy"].tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(pf["overlong"], [0, 0, -0.75, -1])
    assert pf["tests.rewards.helpers:hanging_reward"].tolist() == [1, 1, 0, 1]  # the hung item scores 0
    assert pf["tests.rewards.helpers:positional_only_reward"].tolist() == [0.25] * 4
    hanging = pf["tests.rewards.helpers:hanging_reward"]
    expected_total = 0.5 * pf["format"] + pf["accuracy"] + pf["overlong"] + 2 * hanging + 0.25
    np.testing.assert_allclose(result.total, expected_total, rtol=1e-6)
    assert result.stats["timeouts"] == 1
    assert result.stats["tests.rewards.helpers:hanging_reward/timeouts"] == 1
    assert result.stats["parse_failures"] == 2  # "\frac{" and the text "hang" against a number


def test_scorer_from_another_thread():
    out = {}

    def work():
        with RewardScorer([("accuracy", 1.0, {})], num_workers=1, timeout_s=10.0) as scorer:
            out["r"] = scorer.submit(["<answer>0.5</answer>"], [{"answer": "\\frac12"}]).result(timeout=60)

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert out["r"].total.tolist() == [1.0]


def test_scorer_isolates_one_bad_example_but_raises_on_broken_config():
    exs = [
        {"bbox": [0, 0, 10, 10], "bbox_frame": "original"},
        {"bbox": [0, 0, 10, 10], "bbox_frame": "resized"},  # no resized_size: cannot be mapped
    ]
    comps = ["<answer>[0, 0, 10, 10]</answer>"] * 2
    with RewardScorer([("iou", 1.0, {}), ("overlong", 1.0, {})], num_workers=1) as scorer:
        assert scorer.pool is None  # only inline functions: no worker processes
        result = scorer.score(comps, exs, completion_lengths=[1, 1], max_completion_length=8)
        assert result.per_function["iou"].tolist() == [1.0, 0.0]
        assert result.stats["iou/errors"] == 1
        with pytest.raises(ValueError, match="completion_lengths"):
            scorer.score(comps, exs)  # overlong without its ctx: every item fails


def test_scorer_raises_when_a_pooled_function_always_fails():
    with RewardScorer([("tests.rewards.helpers:boom", 1.0, {})], num_workers=1, timeout_s=10.0) as scorer:
        with pytest.raises(RuntimeError, match="failed on every completion"):
            scorer.submit(["a", "b"], [{}, {}]).result(timeout=60)
