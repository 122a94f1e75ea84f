"""Bad rows are skipped, counted by reason and named; a dataset with no usable row fails at start."""
import logging

import numpy as np
import pytest

from jaxr1.data import DataError, build_dataset
from tests.data.conftest import config, save_image, write_jsonl


def _mixed_rows(tmp_path):
    save_image(str(tmp_path / "ok.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really an image")
    return [
        {"image": "ok.png", "problem": "good 0", "solution": "1"},                       # row 0
        {"image": "missing.png", "problem": "q", "solution": "1"},                       # row 1 missing_image
        {"image": "broken.png", "problem": "q", "solution": "1"},                        # row 2 bad_image
        {"image": "ok.png", "problem": "q"},                                             # row 3 missing_answer
        {"problem": "word " * 400, "solution": "1"},                                     # row 4 too_long
        "{not json",                                                                     # row 5 unreadable_row
        {"messages": [{"role": "user", "content": "<image><image>q"}], "images": ["ok.png"],
         "solution": "1"},                                                               # row 6 image_mismatch
        {"problem": "good 7", "solution": "2"},                                          # row 7
    ]


def test_bad_rows_skipped_counted_and_named(tmp_path, processors, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", _mixed_rows(tmp_path))
    ds = build_dataset(config(path, batch_size=2, max_prompt_length=256, system_prompt=None), *processors)
    it = iter(ds)
    with caplog.at_level(logging.WARNING, logger="jaxr1.data"):
        batches = list(it)
    assert len(batches) == 1 and batches[0].valid.all()
    assert [e["problem"] for e in batches[0].reward_inputs] == ["good 0", "good 7"]
    assert dict(it.bad_rows) == {"missing_image": 1, "bad_image": 1, "missing_answer": 1, "too_long": 1,
                                 "unreadable_row": 1, "image_mismatch": 1}
    m = it.metrics()
    assert m["data/bad_rows"] == 6 and m["data/bad_rows/too_long"] == 1 and m["data/epoch"] == 1.0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for row, reason in [(1, "missing_image"), (2, "bad_image"), (3, "missing_answer"), (4, "too_long"),
                        (5, "unreadable_row"), (6, "image_mismatch")]:
        assert f"{path} row {row}: {reason}" in logged


def test_counts_survive_state_restore(tmp_path, processors):
    path = write_jsonl(tmp_path / "mixed.jsonl", _mixed_rows(tmp_path))
    cfg = config(path, batch_size=1, max_prompt_length=256, num_epochs=None)
    ds = build_dataset(cfg, *processors)
    it = iter(ds)
    next(it), next(it)
    state = it.get_state()
    resumed = iter(ds)
    resumed.set_state(state)
    assert resumed.bad_rows == it.bad_rows and sum(it.bad_rows.values()) == 6
    np.testing.assert_array_equal(next(resumed).input_ids, next(it).input_ids)


def test_all_bad_dataset_fails_at_start_naming_the_file(tmp_path, processors):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"image": "nope.png", "problem": "q", "solution": "1"}] * 3)
    with pytest.raises(DataError, match=r"bad\.jsonl: none of its 3 rows is usable.*missing_image.*row 0"):
        build_dataset(config(path), *processors)
    good = write_jsonl(tmp_path / "good.jsonl", [{"problem": "q", "solution": "1"}])
    with pytest.raises(DataError, match=r"bad\.jsonl"):  # one unusable file among good ones is a config error
        build_dataset(config([good, path]), *processors)


def test_missing_path_and_unknown_format(tmp_path, processors):
    with pytest.raises(DataError, match="no such file"):
        build_dataset(config(tmp_path / "nothing.jsonl"), *processors)
    (tmp_path / "rows.txt").write_text("{}")
    with pytest.raises(DataError, match="unknown data format"):
        build_dataset(config(tmp_path / "rows.txt"), *processors)
