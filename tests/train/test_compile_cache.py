"""The persistent XLA compilation cache: where it lives, and a restarted run loading what the first compiled."""
import os
import re
import subprocess
import sys

import pytest

from jaxr1 import compile_cache


def test_cache_dir_follows_the_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir("auto") == str(tmp_path / "xdg" / "jaxr1" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.cache_dir("auto") == str(tmp_path / "env")
    assert compile_cache.cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
    for off in ("off", "OFF", "false", "none", ""):
        assert compile_cache.cache_dir(off) is None
    assert compile_cache.cache_dir("on") == compile_cache.cache_dir("auto")


def test_off_in_yaml_or_an_override_turns_it_off():
    from jaxr1.config import load_config
    assert compile_cache.cache_dir(load_config(None, ["compilation_cache=off"]).compilation_cache) is None


@pytest.mark.slow
def test_a_restarted_run_loads_its_programs_from_the_cache(tmp_path):
    args = ["data.batch_size=2", "rl.num_generations=4", "rl.max_completion_length=16", "data.num_eval=0",
            "steps=1", f"compilation_cache={tmp_path / 'xla'}"]

    def run(name):
        p = subprocess.run([sys.executable, "-m", "jaxr1.train", *args, f"output_dir={tmp_path / name}"],
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        m = re.search(r"XLA compilation cache: (\d+) programs loaded .*, (\d+) compiled", p.stderr)
        assert m, p.stderr[-3000:]
        return int(m.group(1)), int(m.group(2))

    loaded, compiled = run("first")
    assert loaded == 0 and compiled > 0 and os.listdir(tmp_path / "xla")
    loaded, _ = run("second")
    assert loaded > 0
