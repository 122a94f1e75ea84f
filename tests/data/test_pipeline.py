"""grain pipeline: seeded shuffle, epochs, per-host shards, fixed batch size, resumable iterator state."""
import json

import numpy as np
import pytest

from jaxr1.data import DataConfig, build_dataset
from tests.data.conftest import config, save_image, write_jsonl


@pytest.fixture
def text_rows(tmp_path):
    return write_jsonl(tmp_path / "t.jsonl", [{"problem": f"q{i}", "solution": str(i)} for i in range(10)])


def _answers(ds, n_batches=None):
    out, it = [], iter(ds)
    for k, b in enumerate(it):
        if n_batches is not None and k == n_batches:
            break
        out += [e["answer"] for e, v in zip(b.reward_inputs, b.valid) if v]
    return out


def test_shuffle_is_deterministic_by_seed_and_reshuffles_each_epoch(text_rows, processors):
    def order(seed):
        return _answers(build_dataset(config(text_rows, shuffle=True, seed=seed, num_epochs=2), *processors))

    a = order(1)
    assert a == order(1) and a != order(2)
    assert sorted(a[:10], key=int) == [str(i) for i in range(10)] == sorted(a[10:], key=int)
    assert a[:10] != a[10:] and a[:10] != [str(i) for i in range(10)]


def test_fixed_batch_size_at_end_of_data(text_rows, processors):
    batches = list(build_dataset(config(text_rows, batch_size=4), *processors))
    assert [b.input_ids.shape[0] for b in batches] == [4, 4, 4]
    assert batches[-1].valid.tolist() == [True, True, False, False]


def test_state_restore_gives_identical_next_batch(tmp_path, processors):
    for k in range(6):
        save_image(str(tmp_path / f"{k}.png"), 40 + 20 * k, 60, k)
    rows = [{"image": f"{k % 6}.png", "problem": f"q{k}", "solution": str(k)} for k in range(14)]
    cfg = config(write_jsonl(tmp_path / "i.jsonl", rows), batch_size=3, shuffle=True, seed=3, num_epochs=None,
                 num_threads=2, prefetch=4)
    ds = build_dataset(cfg, *processors)
    it = iter(ds)
    for _ in range(5):  # crosses the first epoch boundary (14 rows)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
    want = [next(it) for _ in range(2)]
    resumed = iter(build_dataset(cfg, *processors))  # a fresh process would build a fresh dataset
    resumed.set_state(state)
    for w in want:
        got = next(resumed)
        np.testing.assert_array_equal(got.input_ids, w.input_ids)
        np.testing.assert_array_equal(got.pixel_values, w.pixel_values)
        assert got.reward_inputs == w.reward_inputs
    assert resumed.epoch == it.epoch


def test_per_host_shards_are_disjoint_and_cover_the_data(text_rows, processors):
    shards = [_answers(build_dataset(config(text_rows, shuffle=True, seed=5), *processors,
                                     process_index=p, process_count=3)) for p in range(3)]
    seen = [a for s in shards for a in s]
    assert sorted(seen, key=int) == [str(i) for i in range(10)]
    assert [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError):
        build_dataset(config(text_rows), *processors, process_index=3, process_count=3)


def test_config_from_mapping_and_synthetic_eval_split(processors):
    cfg = DataConfig.from_run_config({"train": "synthetic:clevr_count", "batch_size": 2, "num_synthetic": 8,
                                      "num_eval": 3, "max_objects": 3, "prompt_bucket": 32})
    assert cfg.path == "synthetic:clevr_count" and cfg.pad_multiple == 32 and "<think>" in cfg.system_prompt
    train = build_dataset(cfg, *processors)
    evals = build_dataset(cfg, *processors, split="eval")
    assert train.num_rows == 8 and evals.num_rows == 3 and not evals.cfg.shuffle
    eval_batches = list(evals)
    assert len(eval_batches) == 2 and eval_batches[-1].valid.tolist() == [True, False]
    assert {e["source"] for b in eval_batches for e in b.reward_inputs} == {"synthetic:counting:3:0@8"}
    assert build_dataset(DataConfig(path="x.jsonl"), *processors, split="eval") is None
