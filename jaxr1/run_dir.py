"""The run directory: its file names, what counts as a run and which checkpoints it holds, whether a run may
continue what its output_dir holds, and the bookkeeping that resuming needs.

A run directory belongs to one run: its `config.yaml` says which. Rerunning with a compatible config resumes
the newest checkpoint; a config that differs in anything that changes the run (model, data, shapes,
algorithm, optimizer) stops with the differing keys, unless the user chooses: `resume=never` (start over;
the old files are moved aside, never deleted), `resume=force` (continue with the new settings), or
`resume=STEP` (continue from that checkpoint).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil

import yaml

from jaxr1.errors import UserError

log = logging.getLogger("jaxr1.run_dir")

CONFIG = "config.yaml"          # the resolved config: whose run the directory holds
MODEL_FILES = "model_files"     # the model's config.json + tokenizer/processor files, beside checkpoints/STEP
CHECKPOINTS = "checkpoints"     # training checkpoints (orbax), one directory per step
FINAL = "checkpoint"            # the final policy, a jaxr1 model checkpoint
HF = "hf"                       # the final policy as an HF directory (export_hf)
ADAPTER = "adapter"             # a LoRA run's adapter alone, as PEFT saves it (export_hf)

# Keys a resumed run may change: lengths of the run, logging/saving cadence, evaluation, workers, layout of
# the computation over devices. Everything else must match the run being continued.
MAY_DIFFER = ("steps", "resume", "output_dir", "compilation_cache", "log_every", "sample_every", "save_every", "keep_checkpoints",
              "export_hf", "eval.", "logging.", "rewards.num_workers", "rewards.timeout_s", "parallel.",
              "model.remat", "model.attention", "rl.logprob_chunk", "rl.micro_batch_prompts", "rl.trim_completions",
              "rl.pack_completions", "rl.pack_prompts_per_row", "rl.compact_finished_rows", "data.num_threads", "data.prefetch",
              "data.worker_count", "data.eval_path", "data.num_eval")
LOG_FILES = ("metrics.jsonl", "samples.jsonl")
ARCHIVE_PREFIX = "replaced-"


class ResumeError(UserError):
    pass


# ----------------------------------------------------------------------------------------------- layout
def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def checkpoint_steps(run_dir: str) -> list[int]:
    """The steps of the run's training checkpoints, oldest first."""
    d = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n, "state")))


def newest_model_dir(run_dir: str) -> str | None:
    """A run's newest model: its newest training checkpoint, else its final checkpoint or HF export."""
    steps = checkpoint_steps(run_dir)
    if steps:
        return os.path.join(run_dir, CHECKPOINTS, str(steps[-1]))
    for name in (FINAL, HF):
        if os.path.isfile(os.path.join(run_dir, name, "config.json")):
            return os.path.join(run_dir, name)
    return None


def is_train_checkpoint(path: str) -> bool:
    """A step directory the trainer writes (RUN/checkpoints/STEP/state, orbax)."""
    return os.path.isdir(os.path.join(path, "state")) and os.path.basename(os.path.normpath(path)).isdigit()


def run_of_checkpoint(step_dir: str) -> str:
    """RUN of RUN/checkpoints/STEP."""
    return os.path.dirname(os.path.dirname(os.path.abspath(step_dir)))


def run_dir_of(model_dir: str) -> str | None:
    """The run directory a model directory belongs to (itself, RUN/hf, RUN/checkpoint, RUN/checkpoints/N)."""
    d = os.path.abspath(model_dir)
    for cand in (d, os.path.dirname(d), os.path.dirname(os.path.dirname(d))):
        if os.path.isfile(os.path.join(cand, CONFIG)):
            return cand
    return None


def processor_dir(model_dir: str) -> str:
    """Where the tokenizer and image processor of a model directory are (a training checkpoint keeps them in
    its run's model_files/)."""
    return os.path.join(run_of_checkpoint(model_dir), MODEL_FILES) if is_train_checkpoint(model_dir) else model_dir


def read_config(run_dir: str) -> dict | None:
    """The run's config.yaml as a dict, or None when there is none."""
    return _read_yaml(os.path.join(run_dir, CONFIG))


def write_config(run_dir: str, cfg_dict: dict) -> None:
    with open(os.path.join(run_dir, CONFIG), "w") as f:
        yaml.safe_dump(cfg_dict, f, sort_keys=False)


def lora_of(run_dir: str) -> dict | None:
    """{rank, alpha, target, base} of a LoRA run (from its config.yaml), or None: its training checkpoints
    hold the adapters only, the base is its model.path."""
    cfg = read_config(run_dir) or {}
    lora = cfg.get("lora") or {}
    if not lora.get("rank"):
        return None
    return {**lora, "base": cfg.get("model", {}).get("path", "tiny")}


# ----------------------------------------------------------------------------------------------- resume


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plain(cfg_dict: dict) -> dict:
    """As the dict reads back from config.yaml (tuples become lists), so saved and new configs compare."""
    return yaml.safe_load(yaml.safe_dump(cfg_dict, sort_keys=False))


def config_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    a, b = flatten(plain(old)), flatten(plain(new))
    keys = [k for k in dict.fromkeys([*a, *b]) if not k.startswith(MAY_DIFFER) and k not in MAY_DIFFER]
    return [(k, a.get(k, "<unset>"), b.get(k, "<unset>")) for k in keys if a.get(k, "<unset>") != b.get(k, "<unset>")]


def plan_resume(run_dir: str, cfg_dict: dict, resume, steps: list[int], *, archive: bool = True) -> int | None:
    """The checkpoint step to restore (None: start at step 1), or a ResumeError saying why not and what to do.
    `steps` are the run directory's checkpoint steps; with resume=never an existing run is moved aside
    (when `archive`; only one process of a multi-host run does that)."""
    old = read_config(run_dir)
    has_run = old is not None or bool(steps) or any(os.path.exists(os.path.join(run_dir, f)) for f in LOG_FILES)
    if resume == "never":
        if has_run and archive:
            moved = archive_run(run_dir)
            log.warning("resume=never: moved the previous run's files to %s", moved)
        return None
    if not has_run:
        if isinstance(resume, int):
            raise ResumeError(f"resume={resume}: {run_dir} holds no run to resume")
        return None
    ways = (f"choose a new output_dir, or resume=never to start over in it (its files are moved to "
            f"{ARCHIVE_PREFIX}<time>/ inside it), or resume=force to continue it with the new settings")
    if old is None and resume != "force":
        raise ResumeError(f"{run_dir} has checkpoints or logs but no {CONFIG}, so whose run it is is unknown; {ways}")
    diffs = config_differences(old, cfg_dict) if old is not None else []
    if diffs:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6]) + (
            f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        if resume != "force":
            raise ResumeError(f"{run_dir} holds a different run ({shown}); {ways}")
        log.warning("resume=force: continuing %s with changed settings: %s", run_dir, shown)
    if isinstance(resume, int):
        if resume not in steps:
            raise ResumeError(f"resume={resume}: no checkpoint at step {resume} in {run_dir}/{CHECKPOINTS} "
                              f"(saved steps: {', '.join(map(str, steps)) or 'none'})")
        return resume
    return steps[-1] if steps else None


def archive_run(run_dir: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = os.path.join(run_dir, f"{ARCHIVE_PREFIX}{stamp}")
    os.makedirs(dest)
    for name in os.listdir(run_dir):
        if not name.startswith(ARCHIVE_PREFIX):
            shutil.move(os.path.join(run_dir, name), os.path.join(dest, name))
    return dest


def trim_logs(run_dir: str, last_step: int) -> int:
    """Drop log rows past `last_step` (steps a resumed run will run again); returns how many were dropped."""
    dropped = 0
    for name in LOG_FILES:
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = f.readlines()
        keep = [ln for ln in lines if _row_step(ln) <= last_step]
        dropped += len(lines) - len(keep)
        if len(keep) != len(lines):
            with open(path, "w") as f:
                f.writelines(keep)
    return dropped


def _row_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", float("inf")))
    except (ValueError, AttributeError):
        return float("inf")   # a torn last line of a killed run


def _read_yaml(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = yaml.safe_load(f)
    return data if isinstance(data, dict) else None
