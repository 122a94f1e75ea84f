"""Compaction of finished rows between decode segments (DecodeSpec.compact): the plan regroups live rows into
fewer samples per group, and the sampled tokens, log-probs, lengths and stop reasons are exactly those of the
one-program decode that keeps every row to the end (each row draws with its own key)."""
import numpy as np
import pytest

from jaxr1.sampling import CALLS, generate
from jaxr1.sampling.sampler import STOP_EOS, STOP_LENGTH, compaction_plan
from tests.sampling.prompts import image_batch


def _check_plan(done, group_prompt, n, plan):
    src_rows, src_groups, prompts, m = plan
    b = len(group_prompt)
    assert src_rows.shape == (b * m,) and src_groups.shape == prompts.shape == (b,)
    live = set(np.flatnonzero(~done).tolist())
    assert sorted(r for r in src_rows.tolist() if r >= 0) == sorted(live)   # every live row once, nothing else
    for g in range(b):
        for r in src_rows[g * m:(g + 1) * m]:
            if r >= 0:   # a group's rows belong to the prompt whose cache it holds
                assert group_prompt[r // n] == prompts[g] == group_prompt[src_groups[g]]


def test_plan_regroups_live_rows():
    n, group_prompt = 8, np.arange(4)
    done = np.ones(32, bool)
    done[[0, 1, 2, 9, 10, 11, 12, 13, 30]] = False       # prompt 0: 3 live, prompt 1: 5, prompt 3: 1
    plan = compaction_plan(done, group_prompt, n)
    assert plan[3] == 4    # n' = 4: 1 + 2 + 1 = 4 groups fit; n' = 2: 2 + 3 + 1 = 6 > 4
    _check_plan(done, group_prompt, n, plan)


def test_plan_smallest_fit_and_none():
    group_prompt = np.arange(2)
    done = np.ones(8, bool)
    done[[0, 1, 2]] = False            # prompt 0 has 3 of its 4 live: n' = 2 needs 2 groups (fits), n' = 1 needs 3
    plan = compaction_plan(done, group_prompt, 4)
    assert plan[3] == 2 and plan[2].tolist() == [0, 0]
    _check_plan(done, group_prompt, 4, plan)
    done[:] = False                    # nothing stopped: nothing smaller fits
    assert compaction_plan(done, group_prompt, 4) is None
    done[:] = True
    done[[5]] = False                  # one live row: n' = 1
    plan = compaction_plan(done, group_prompt, 4)
    assert plan[3] == 1 and plan[0].tolist() == [5, -1] and plan[2].tolist() == [1, 0]


def test_plan_keeps_rows_divisible_by_the_mesh():
    done = np.ones(16, bool)
    done[0] = False                    # 2 prompts x 8: n' = 1 would leave 2 rows for 4 shards
    plan = compaction_plan(done, np.arange(2), 8, shards=4)
    assert plan[3] == 2
    _check_plan(done, np.arange(2), 8, plan)


@pytest.mark.parametrize("loop", ["unroll", "scan"])
def test_compacted_decode_equals_full_rows(tiny_pair, loop):
    """Temperature 1 with a third of the vocabulary as EOS (rows stop at many different steps) and min_window 4
    (windows 4 .. 64): compaction on and off give the same rows; the later segments run on fewer rows."""
    _, model = tiny_pair
    batch = image_batch()
    eos = tuple(range(1, model.config.text.vocab_size, 3))
    kw = dict(max_new_tokens=40, temperature=1.0, num_generations=8, eos_token_ids=eos, seed=5, min_window=4,
              layer_loop=loop)
    full = generate(model, **kw, **batch, compact=False)
    before = CALLS["segment"], CALLS["segment_rows"]
    out = generate(model, **kw, **batch)
    segments, rows = CALLS["segment"] - before[0], CALLS["segment_rows"] - before[1]
    for name in ("tokens", "lengths", "stop_reason"):
        np.testing.assert_array_equal(getattr(out, name), getattr(full, name), err_msg=name)
    for name in ("logprobs", "sampling_logprobs"):
        np.testing.assert_allclose(getattr(out, name), getattr(full, name), atol=1e-5, err_msg=name)
    lengths = np.asarray(full.lengths)
    assert set(np.asarray(full.stop_reason).tolist()) <= {STOP_EOS, STOP_LENGTH} and len(set(lengths.tolist())) > 3
    b = batch["input_ids"].shape[0]
    assert segments >= 2 and rows < segments * b * 8, (segments, rows)   # some segment ran on fewer rows


@pytest.mark.slow
def test_two_processes_compact_to_the_same_rows():
    """jax.distributed over 2 localhost processes (4 CPU devices each): each process's view of the compacted,
    row-sharded rollout equals its own single-device run without compaction."""
    import os
    import socket
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.sampling.multihost_compact_run", str(i), str(port)],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
        assert ": ok" in log, log[-2000:]
