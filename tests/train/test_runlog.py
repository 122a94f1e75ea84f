"""RunLog: metrics.jsonl, TensorBoard and an offline wandb run hold the same scalars; samples go to a wandb table.

Both readers below parse the files as written (no TensorBoard install; wandb no longer ships a Python reader
of its .wandb files), so the checks do not depend on the writers' own read-back code.
"""
import glob
import json
import os
import struct
import time

import pytest

from jaxr1.runlog import WANDB_ID_FILE, RunLog

# Real key names, including a per-source one that TensorBoard's tag rules rewrite.
STEPS = {
    0: {"eval/accuracy": 0.25, "eval/num_rows": 8.0},
    1: {"reward/total_mean": 0.5, "reward/total_std": 0.1, "train/kl": 0.01, "synthetic:counting@0/frac": 1.0},
    2: {"reward/total_mean": 0.75, "reward/total_std": 0.2, "train/kl": 0.02, "synthetic:counting@0/frac": 1.0},
}
ROWS = [{"prompt": "How many?", "images": "synthetic:counting#3", "row": 3, "answer": "4",
         "completion": "<answer>4</answer>", "accuracy": 1.0, "format": 1.0},
        {"prompt": "How many?", "images": None, "row": 5, "answer": "2", "completion": "3", "accuracy": 0.0,
         "format": 0.0}]


def write_run(run_dir, **kw):
    log = RunLog(str(run_dir), **kw)
    for step, values in STEPS.items():
        log.scalars(step, values)
    log.sample_rows(2, ROWS)
    log.close()


def jsonl_scalars(run_dir):
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        out.setdefault(row.pop("step"), {}).update(row)
    return out


def tb_scalars(run_dir):
    """TFRecord framing: u64 length, u32 crc, payload, u32 crc; each payload an Event proto."""
    from tensorboardX.proto import event_pb2
    out = {}
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(event.step, {})[v.tag] = v.simple_value
    return out


def wandb_records(path):
    """A .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB; each record a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a Record proto, possibly split over blocks."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, part = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:   # a block's tail too short for a header is zero padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part, pos = part + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            yield pb.Record.FromString(part)
            part = b""


def offline_runs(run_dir):
    return sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")))


def finished_records(path):
    """A .wandb file's records once complete: wandb-core (a separate process) may still be writing it when
    run.finish() returns; its last record is the run's exit."""
    deadline = time.time() + 60
    while True:
        records = list(wandb_records(path))
        if records and records[-1].WhichOneof("record_type") == "exit" or time.time() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(run_dir):
    out = {}
    (path,) = offline_runs(run_dir)
    for rec in finished_records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:   # a key's path: ["reward/total_mean"], or ["samples", "nrows"]
            *parents, last = item.nested_key or [item.key]
            node = row
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = json.loads(item.value_json)
        out.setdefault(row.pop("_step"), {}).update(row)
    return out


def test_metrics_jsonl_and_tensorboard_hold_the_same_scalars(tmp_path):
    write_run(tmp_path)
    assert jsonl_scalars(tmp_path) == STEPS
    # Same values (TensorBoard keeps float32) under the same names, ":" and "@" made "_".
    tags = {(s, k.replace(":", "_").replace("@", "_")): v for s, vals in STEPS.items() for k, v in vals.items()}
    assert {(s, k): v for s, vals in tb_scalars(tmp_path).items() for k, v in vals.items()} == pytest.approx(tags)
    rows = [json.loads(l) for l in open(tmp_path / "samples.jsonl")]
    assert [r["step"] for r in rows] == [2, 2] and rows[0]["completion"] == ROWS[0]["completion"]


def test_not_enabled_writes_nothing(tmp_path):
    write_run(tmp_path, enabled=False, wandb={"mode": "offline"})
    assert os.listdir(tmp_path) == []


@pytest.fixture
def offline_wandb(tmp_path_factory, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")   # no network even if a user's settings say online
    home = tmp_path_factory.mktemp("wandb_home")  # wandb's settings, cache and artifact staging: not ~
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home))


def test_offline_wandb_matches_metrics_jsonl(tmp_path, offline_wandb):
    write_run(tmp_path, wandb={"project": "jaxr1-test", "name": "t", "mode": "offline",
                               "config": {"rl": {"beta": 0.0}, "steps": 2}})
    history = wandb_history(tmp_path)
    scalars = {s: {k: v for k, v in row.items() if not k.startswith("_") and k != "samples"}
               for s, row in history.items()}
    assert scalars == jsonl_scalars(tmp_path)

    table_ref = history[2]["samples"]
    assert table_ref["_type"] == "table-file" and table_ref["nrows"] == 2
    (run,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    table = json.load(open(os.path.join(run, "files", table_ref["path"])))
    assert table["columns"] == ["step", "prompt", "images", "completion", "answer", "accuracy", "format"]
    assert table["data"][0] == [2, "How many?", "synthetic:counting#3", "<answer>4</answer>", "4", 1.0, 1.0]
    assert table["data"][1][2] == ""   # a row without an image reference
    # The run config travels in the run record (later config records would only update it).
    (run_rec,) = [r.run for r in finished_records(offline_runs(tmp_path)[0]) if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    assert config["rl"] == {"beta": 0.0} and config["steps"] == 2 and run_rec.display_name == "t"


def test_resume_continues_the_same_wandb_run(tmp_path, offline_wandb):
    opts = {"project": "jaxr1-test", "mode": "offline"}
    RunLog(str(tmp_path), wandb=opts).close()
    first = (tmp_path / WANDB_ID_FILE).read_text().strip()
    time.sleep(1.1)   # offline run directories are named to the second
    RunLog(str(tmp_path), first_step=3, wandb=opts).close()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    runs = [next(r.run for r in finished_records(p) if r.WhichOneof("record_type") == "run")
            for p in offline_runs(tmp_path)]
    assert [(r.run_id, r.resume) for r in runs] == [(first, False), (first, True)]   # `wandb sync` joins them
    RunLog(str(tmp_path), wandb=opts).close()   # starting over (no checkpoint restored): a new run
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() != first


def test_missing_wandb_is_a_user_error(tmp_path, monkeypatch):
    import sys

    from jaxr1.errors import UserError
    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"pip install wandb"):
        RunLog(str(tmp_path), wandb={"project": "p", "mode": "offline"})
    RunLog(str(tmp_path), wandb={"mode": "disabled"}).close()   # off: wandb is never imported


def test_online_without_an_api_key_is_a_user_error(tmp_path, offline_wandb, monkeypatch):
    from jaxr1.runlog import WandbError
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))   # no ~/.netrc key either
    with pytest.raises(WandbError, match="wandb login"):
        RunLog(str(tmp_path), wandb={"project": "p", "mode": "online"})
