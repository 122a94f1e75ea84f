"""Plot a run's training curves from its metrics.jsonl into one PNG.

    python -m jaxr1.plot RUN_DIR [--out FILE.png]     (default RUN_DIR/curves.png)

Panels over steps: reward (mean with a +/- std band), accuracy (training rollouts and held-out, step 0 being
the eval before training), completion length (mean and max), KL and clip fraction. A panel whose keys the run
never logged (no accuracy reward, beta = 0) is left out. Needs matplotlib: pip install matplotlib.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from jaxr1.errors import UserError, run_cli

# (title, [(key, label, style)], y-axis limits or None); "band" draws key +/- reward/total_std.
PANELS = [
    ("reward", [("reward/total_mean", "mean (± std)", "band")], None),
    ("accuracy", [("accuracy", "training rollouts", "line"), ("eval/accuracy", "held-out", "points")], (0, 1)),
    ("completion length (tokens)", [("completion/length_mean", "mean", "line"),
                                    ("completion/length_max", "max", "line")], None),
    ("KL to reference", [("train/kl", "kl", "line")], None),
    ("clip fraction", [("train/clip_frac", "total", "line"), ("train/clip_frac_low", "low", "line"),
                       ("train/clip_frac_high", "high", "line")], None),
]


class PlotError(UserError):
    pass


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise PlotError(f"{path}: no such file (RUN_DIR is a training run's output_dir)")
    rows = []
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:   # the torn last line of a killed run
                break
            raise PlotError(f"{path}:{i + 1}: not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            raise PlotError(f"{path}:{i + 1}: expected an object with a numeric 'step'")
        rows.append(row)
    if not rows:
        raise PlotError(f"{path}: no metrics rows (the run logged no step yet)")
    return rows


def series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows that logged `key`, in step order."""
    pts = sorted((r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]))
    return [s for s, _ in pts], [v for _, v in pts]


def plot(rows: list[dict], out: str, title: str = "") -> int:
    """Writes the PNG; returns the number of panels drawn."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError('plotting needs matplotlib: pip install matplotlib (or pip install -e ".[plot]")') from None
    matplotlib.use("Agg")   # files only: no display on a training host
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    panels = [p for p in PANELS if any(series(rows, key)[0] for key, _, _ in p[1])]
    if not panels:
        raise PlotError(f"no plottable metrics: none of {', '.join(k for p in PANELS for k, _, _ in p[1])}")
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 3.3 * nrows), squeeze=False)
    steps = [r["step"] for r in rows]
    pad = max(0.5, 0.02 * (max(steps) - min(steps)))   # one step range for all panels: a step lines up across them
    for ax, (name, lines, ylim) in zip(axes.flat, panels):
        for key, label, style in lines:
            x, y = series(rows, key)
            if not x:
                continue
            if style == "points":   # a few evals: markers, joined so a trend reads
                ax.plot(x, y, "o--", label=label, markersize=5)
            else:
                ax.plot(x, y, label=label, linewidth=1.3)
            if style == "band":
                std = dict(zip(*series(rows, "reward/total_std")))
                xs = [s for s in x if s in std]
                mean = dict(zip(x, y))
                ax.fill_between(xs, [mean[s] - std[s] for s in xs], [mean[s] + std[s] for s in xs], alpha=0.25)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_xlim(min(steps) - pad, max(steps) + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(panels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxr1.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a training run's output_dir (holds metrics.jsonl)")
    ap.add_argument("--out", help="PNG to write (default RUN_DIR/curves.png)")
    args = ap.parse_args(argv)

    def run() -> int:
        rows = read_metrics(os.path.join(args.run_dir, "metrics.jsonl"))
        out = args.out or os.path.join(args.run_dir, "curves.png")
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise PlotError(f"--out {out}: its directory does not exist")
        n = plot(rows, out, title=os.path.basename(os.path.abspath(args.run_dir)))
        print(f"wrote {out} ({n} panels, steps {min(r['step'] for r in rows)}-{max(r['step'] for r in rows)})")
        return 0
    return run_cli(run, "jaxr1.plot")


if __name__ == "__main__":
    sys.exit(main())
