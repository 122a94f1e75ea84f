"""python -m jaxr1.plot: a metrics.jsonl (hand-written with train.py's key names, or a real run's) becomes a PNG;
bad input is a one-line error."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plot_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxr1.plot", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def write_metrics(run_dir, steps=20):
    """Rows as train.py logs them: the "before" eval at step 0, train rows, evals sharing a train row's step."""
    rows = [{"step": 0, "eval/accuracy": 0.2, "eval/num_rows": 8.0}]
    for s in range(1, steps + 1):
        acc = min(1.0, 0.2 + 0.03 * s)
        rows.append({"step": s, "reward/accuracy": acc, "reward/format": 0.9, "reward/total_mean": acc + 0.45,
                     "reward/total_std": 0.3 - 0.01 * s, "accuracy": acc, "format_rate": 0.9,
                     "completion/length_mean": 40.0 - s, "completion/length_max": 64.0, "train/kl": 0.001 * s,
                     "train/clip_frac": 0.01, "train/clip_frac_low": 0.004, "train/clip_frac_high": 0.006,
                     "train/loss": 0.01, "optim/lr": 1e-6, "time/step_s": 2.0})
        if s in (10, steps):
            rows.append({"step": s, "eval/accuracy": acc - 0.05, "eval/num_rows": 8.0})
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 21, "reward/tot')   # the torn last line of a killed run is ignored


def assert_png(path):
    data = open(path, "rb").read()
    assert len(data) > 10_000 and data[:8] == PNG_MAGIC


def test_plot_cli_writes_a_png(tmp_path):
    write_metrics(tmp_path)
    r = plot_cli(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "5 panels" in r.stdout
    assert_png(tmp_path / "curves.png")
    r = plot_cli(tmp_path, "--out", tmp_path / "other.png")
    assert r.returncode == 0, r.stderr
    assert_png(tmp_path / "other.png")


def test_panels_without_keys_are_left_out(tmp_path):
    from jaxr1.plot import plot
    rows = [{"step": s, "reward/total_mean": 0.1 * s, "completion/length_mean": 10.0} for s in range(1, 4)]
    assert plot(rows, str(tmp_path / "c.png")) == 2   # reward, length: no accuracy, KL or clip fraction
    assert_png(tmp_path / "c.png")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "no metrics rows"),
    ('{"step": 1}\nnot json\n{"step": 2}\n', "metrics.jsonl:2: not a JSON object"),
    ('{"step": 1, "time/step_s": 1.0}\n', "no plottable metrics"),
])
def test_bad_input_is_one_line_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    r = plot_cli(tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("jaxr1.plot: error: ") and message in r.stderr and r.stderr.count("\n") == 1


def test_missing_matplotlib_is_one_line_error(tmp_path, monkeypatch):
    from jaxr1.errors import UserError
    from jaxr1.plot import plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match="pip install matplotlib"):
        plot([{"step": 1, "reward/total_mean": 0.5}], str(tmp_path / "c.png"))


@pytest.mark.slow
def test_plot_of_a_real_run(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "jaxr1.train", "steps=3", "data.batch_size=2", "rl.num_generations=4",
                        "rl.max_completion_length=16", "data.num_eval=8", "eval.batch_size=8", "export_hf=false",
                        f"output_dir={run}"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = plot_cli(run)
    assert r.returncode == 0, r.stderr
    # beta = 0 logs no KL: reward, accuracy, length and clip fraction, from the "before" eval at 0 to step 3.
    assert "4 panels" in r.stdout and "steps 0-3" in r.stdout
    assert_png(run / "curves.png")
