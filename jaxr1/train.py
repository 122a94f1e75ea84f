"""python -m jaxr1.train [--config FILE.yaml] [key.sub=value ...]

GRPO (and family) on Qwen2.5-VL, top to bottom: set up, model, data, rewards, evaluate, train loop, save.
Without --config it runs the embedded default (jaxr1/assets/default.yaml, overrides still apply): the embedded
tiny checkpoint (SFT-warm-started) on synthetic counting scenes, printing held-out accuracy before and after RL.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

# Before the imports below: orbax logs through absl while it is imported, and absl's first log calls
# logging.basicConfig() (a bare WARNING-level handler) when the root logger has none, making this a no-op.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

import jax  # noqa: E402 - after the logging set-up above
from tqdm import tqdm  # noqa: E402

from jaxr1 import compile_cache
from jaxr1.assets import DEFAULT_CONFIG
from jaxr1.config import load_config, to_dict
from jaxr1.data import build_dataset
from jaxr1.data.text import eos_ids
from jaxr1.dry_run import dry_run, required_devices
from jaxr1.errors import run_cli
from jaxr1.loading import build_eval_batches
from jaxr1.parallel.distributed import initialize_from_env
from jaxr1.models.inputs import max_patches
from jaxr1.rewards import RewardScorer, reward_specs
from jaxr1.rl.rollout import sampler_rollout
from jaxr1.rl.step import StepContext, grpo_step
from jaxr1.run import Run
from jaxr1.run_dir import checkpoint_steps, plan_resume
from jaxr1.runlog import wandb_options
from jaxr1.setup import set_up

log = logging.getLogger("jaxr1.train")
NOISY_LOGGERS = ("absl", "jax._src.xla_bridge")   # orbax's per-save chatter, the TPU probe on CPU hosts


# ----------------------------------------------------------------------------------------------- set up
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m jaxr1.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML file (default: the embedded default)")
    ap.add_argument("--dry_run", action="store_true", help="build and compile, report memory, do not train")
    ap.add_argument("--target", default="cpu", choices=("cpu", "h100", "tpu-v5p"),
                    help="with --dry_run: compile for this hardware without it (device count from the mesh)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.num_generations=8 optim.lr=1e-6")
    return ap.parse_args(argv)


def _dry_run(args) -> int:
    """Compile everything for the configured shapes and mesh (forced host devices, or --target's compile-only
    devices); print memory, FLOPs, the attention kernel and the batch layout."""
    # Both settings are read when JAX first starts its backends (not at import), so they go here, before any
    # array exists: compile-only targets need no local accelerator backend; a cpu dry run needs one CPU device
    # per mesh position.
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    cfg = load_config(args.config, args.overrides)
    n = required_devices(cfg.parallel)
    if n and args.target == "cpu":
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    compile_cache.enable(cfg.compilation_cache)   # the cpu programs; a target's are never written
    report = dry_run(cfg, target=args.target)
    return 0 if report["fits"] else 3


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_cli(lambda: _dry_run(args) if args.dry_run else train(args), "jaxr1.train")


def train(args) -> int:
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    initialize_from_env()   # multi-host: before any other JAX call; a no-op for one process
    compile_cache.enable(cfg.compilation_cache)
    is_main, t_start = jax.process_index() == 0, time.time()
    wandb_opts = wandb_options(cfg.logging.wandb, to_dict(cfg), check=is_main)

    # --- run directory: whose run it holds decides whether (and from where) this one resumes
    run_dir = os.path.abspath(cfg.output_dir)
    resume_step = plan_resume(run_dir, to_dict(cfg), cfg.resume, checkpoint_steps(run_dir), archive=is_main)
    if jax.process_count() > 1:   # process 0 may have moved an old run aside (resume=never)
        from jax.experimental import multihost_utils   # multi-host only: not imported on one process
        multihost_utils.sync_global_devices("jaxr1.run_dir")

    # --- model: mesh, layout check, model, LoRA, attention kernel, learner (what the dry run compiles)
    s, state = set_up(cfg, hosts=jax.process_count())
    learner, tokenizer, image_processor = s.learner, s.tokenizer, s.image_processor
    # The KL reference (a copy of the initial weights; with LoRA the base itself); never built when beta=0.
    ref_params = learner.reference_params(state) if cfg.rl.beta > 0 else None

    # --- data
    dataset = build_dataset(cfg.data, tokenizer, image_processor, process_index=jax.process_index(),
                            process_count=jax.process_count())
    eval_batches = build_eval_batches(cfg, tokenizer, image_processor)

    # --- rewards (held-out accuracy is always the verifier's, whatever the training rewards are)
    scorer = RewardScorer(reward_specs(cfg.rewards), num_workers=cfg.rewards.num_workers,
                          timeout_s=cfg.rewards.timeout_s)
    eval_scorer = RewardScorer(reward_specs(cfg.rewards, only=("accuracy",)), num_workers=cfg.rewards.num_workers,
                               timeout_s=cfg.rewards.timeout_s) if eval_batches else None

    # --- resume: the planned checkpoint, else the held-out accuracy before training
    os.makedirs(run_dir, exist_ok=True)
    run = Run(cfg, run_dir, s, data_iter=iter(dataset), eval_batches=eval_batches, scorer=scorer,
              eval_scorer=eval_scorer, eos=eos_ids(tokenizer), is_main=is_main)
    run.write_files(to_dict(cfg))
    state, start_step = run.resume(state, resume_step, wandb_opts)
    run.catch_signals()

    # --- train loop
    rollout = sampler_rollout(learner, cfg.rl, tokenizer=tokenizer, eos_token_ids=run.eos,
                              compute_dtype=cfg.model.compute_dtype, mesh=s.mesh)
    ctx = StepContext(cfg, learner, rollout, scorer, next_batch=run.next_batch, mesh=s.mesh,
                      micro_batches=s.layout.micro_batches, patches_per_slot=max_patches(image_processor),
                      ref_params=ref_params)
    bar = tqdm(range(start_step, cfg.steps + 1), desc="grpo", disable=not is_main, dynamic_ncols=True,
               initial=start_step - 1, total=cfg.steps)
    for step in bar:
        with jax.set_mesh(s.mesh):   # ambient while tracing: a Pallas attention kernel shard_maps over it
            state, metrics, record = grpo_step(state, run.next_batch(), ctx)
        metrics.update(run.data_iter.metrics())
        run.log_step(step, metrics, record)
        bar.set_postfix(progress(metrics))
        if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.steps:
            run.evaluate(state, f"step{step}", step)
        if run.stopping(step):
            run.save(step, state, force=True)
            run.close()
            log.warning("preempted: saved step %d to %s; rerun the same command to resume", step, run.ckpt.directory)
            return 0
        if cfg.save_every and step % cfg.save_every == 0:
            run.save(step, state)

    # --- evaluate, save, export
    if start_step <= cfg.steps and run.ckpt.manager.latest_step() != cfg.steps:
        run.save(cfg.steps, state, force=True)
    after = run.evaluate(state, "after", cfg.steps)
    run.close()
    run.export(state)
    log.info(compile_cache.summary())
    print(f"run directory: {run_dir} ({time.time() - t_start:.0f}s)")
    if run.before and after:
        print(f"held-out accuracy: before {run.before['accuracy']:.2f} after {after['accuracy']:.2f}")
    return 0


def progress(metrics: dict) -> dict:
    """The progress bar's figures."""
    shown = {"reward": f"{metrics['reward/total_mean']:.3f}", "len": f"{metrics['completion/length_mean']:.0f}"}
    if "accuracy" in metrics:   # only when an accuracy reward is configured
        shown["acc"] = f"{metrics['accuracy']:.2f}"
    return shown


if __name__ == "__main__":
    sys.exit(main())
