"""What a user types, with a mistake in it: one line naming what is wrong and what to do, exit code 2, no
traceback. Each case runs the real command in a subprocess."""
import json
import os
import subprocess
import sys

import pytest
import yaml


def run(module, *args, cwd=None, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(rc, err, *needles, prog="jaxr1.train"):
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: "), last
    for n in needles:
        assert n in last, (n, last)


def train_in_process(capsys, *args):
    """main() as the command runs it, without a new interpreter per case (the fast suite's budget)."""
    from jaxr1.train import main
    rc = main(list(args))
    return rc, capsys.readouterr().err


def test_missing_model_path_from_the_command_line(tmp_path):
    rc, _, err = run("jaxr1.train", f"output_dir={tmp_path / 'run'}", "model.path=/no/such/model")
    assert_user_error(rc, err, "'/no/such/model': no such directory", "hub name")


@pytest.mark.parametrize("args, needles", [
    (["data.path=synthetic:counting:0"], ["synthetic:counting", "at least 1 row"]),
    (["data.path=synthetic:counting:many"], ["synthetic:<kind>[:<n>[:<seed>]]"]),
    (["rl.num_generatons=4"], ["rl.num_generatons", "num_generations"]),
    (["resume=maybe"], ["resume='maybe'"]),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, args, needles):
    rc, err = train_in_process(capsys, f"output_dir={tmp_path / 'run'}", *args)
    assert_user_error(rc, err, *needles)


def test_every_row_bad_names_the_file_and_the_schema(tmp_path, capsys):
    data = tmp_path / "swift.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"}], "solution": "4"}) + "\n")
    rc, err = train_in_process(capsys, f"output_dir={tmp_path / 'run'}", f"data.path={data}", "data.schema=r1v",
                               "data.num_eval=0")
    assert_user_error(rc, err, str(data), "none of its 1 rows is usable", "data.schema=swift")


def test_hub_name_missing_from_the_cache_offline(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    rc, err = train_in_process(capsys, f"output_dir={tmp_path / 'run'}", "model.path=SomeOrg/NotCached-VL")
    assert_user_error(rc, err, "'SomeOrg/NotCached-VL': not in the HF cache", "HF_HUB_OFFLINE")


def test_reused_output_dir_with_another_config_stops_and_keeps_the_old_run(tmp_path, capsys):
    from jaxr1.assets import DEFAULT_CONFIG
    from jaxr1.config import load_config, to_dict
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = to_dict(load_config(DEFAULT_CONFIG, [f"output_dir={run_dir}"]))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    rc, err = train_in_process(capsys, f"output_dir={run_dir}", "rl.max_completion_length=16", "optim.lr=0.1")
    assert_user_error(rc, err, "holds a different run", "rl.max_completion_length: 32 -> 16", "optim.lr",
                      "new output_dir", "resume=never", "resume=force")
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == old   # not overwritten


def test_eval_and_convert_errors_are_one_line(tmp_path, capsys):
    from jaxr1 import convert, eval as eval_cli
    rc = eval_cli.main(["--model", str(tmp_path / "nothing")])
    assert_user_error(rc, capsys.readouterr().err, "no such directory", prog="jaxr1.eval")
    (tmp_path / "empty").mkdir()
    rc = convert.main(["to-hf", str(tmp_path / "empty"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert_user_error(rc, err, "not a jaxr1 checkpoint", prog="jaxr1.convert")


def test_eval_help_is_whole():
    rc, out, _ = run("jaxr1.eval", "--help")
    assert rc == 0
    assert "accuracy overall and per\ntask/source" in out and "command-line keys override them." in out
