"""Whether an output_dir's run may be continued (plan_resume), log trimming on resume."""
import json
import os

import pytest
import yaml

from jaxr1.config import load_config, to_dict
from jaxr1.run_dir import ResumeError, config_differences, plan_resume, trim_logs


def cfg(*overrides):
    return to_dict(load_config(None, list(overrides)))


def write_run(d, config):
    d.mkdir(exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_fresh_directory_starts_at_step_one(tmp_path):
    assert plan_resume(str(tmp_path / "new"), cfg(), "auto", []) is None
    with pytest.raises(ResumeError, match="holds no run"):
        plan_resume(str(tmp_path / "new"), cfg(), 3, [])


def test_compatible_config_resumes_the_newest_step(tmp_path):
    write_run(tmp_path, cfg("steps=10"))
    # steps, eval and saving cadence may differ; the run is the same
    assert plan_resume(str(tmp_path), cfg("steps=20", "eval.every=5", "save_every=2"), "auto", [2, 4]) == 4
    assert plan_resume(str(tmp_path), cfg("steps=20"), 2, [2, 4]) == 2
    with pytest.raises(ResumeError, match=r"no checkpoint at step 3 .*saved steps: 2, 4"):
        plan_resume(str(tmp_path), cfg(), 3, [2, 4])


def test_different_run_stops_naming_the_keys_and_the_ways_out(tmp_path):
    write_run(tmp_path, cfg("model.path=/models/a"))
    with pytest.raises(ResumeError) as e:
        plan_resume(str(tmp_path), cfg("model.path=/models/b", "rl.beta=0.04"), "auto", [5])
    msg = str(e.value)
    assert "model.path: '/models/a' -> '/models/b'" in msg and "rl.beta: 0.0 -> 0.04" in msg
    assert "new output_dir" in msg and "resume=never" in msg and "resume=force" in msg
    assert plan_resume(str(tmp_path), cfg("model.path=/models/b"), "force", [5]) == 5


def test_checkpoints_without_config_are_not_continued_silently(tmp_path):
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(ResumeError, match="no config.yaml"):
        plan_resume(str(tmp_path), cfg(), "auto", [3])


def test_never_moves_the_old_run_aside(tmp_path):
    write_run(tmp_path, cfg("seed=1"))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert plan_resume(str(tmp_path), cfg("seed=2"), "never", [1]) is None
    (archived,) = [n for n in os.listdir(tmp_path) if n.startswith("replaced-")]
    assert sorted(os.listdir(tmp_path / archived)) == ["config.yaml", "metrics.jsonl"]
    assert os.listdir(tmp_path) == [archived]


def test_config_differences_ignore_tuple_vs_list():
    assert config_differences(cfg("data.path=[a.jsonl, b.jsonl]"), cfg("data.path=[a.jsonl, b.jsonl]")) == []


def test_trim_logs_keeps_steps_up_to_the_checkpoint(tmp_path):
    rows = [{"step": s} for s in (0, 1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "tor')
    assert trim_logs(str(tmp_path), 2) == 3
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [0, 1, 2]
