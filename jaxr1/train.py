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

log = logging.getLogger("jaxr1.train")


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


def sample_rows(record, tokenizer, group_size: int, names: list[str]) -> list[dict]:
    """samples.jsonl / wandb rows: each prompt's first completion with its rewards."""
    batch, texts, per_function = record.batch, record.rollout.texts, record.rewards.per_function
    rows = []
    for i in range(0, len(texts), group_size):
        p, ex = i // group_size, record.batch.examples[i // group_size]
        rows.append({"prompt": tokenizer.decode(batch.input_ids[p][batch.attention_mask[p] > 0]),
                     "images": ex.get("source"), "row": ex.get("row"), "answer": ex.get("answer"),
                     "completion": texts[i], **{k: float(per_function[k][i]) for k in names}})
    return rows


def _dry_run(args) -> int:
    """Compile everything for the configured shapes and mesh (forced host devices, or --target's compile-only
    devices); print memory, FLOPs, the attention kernel and the batch layout."""
    import jax
    if not os.environ.get("JAX_PLATFORMS"):   # compile-only targets need no local accelerator backend
        jax.config.update("jax_platforms", "cpu")   # (before any backend starts; the env var is read at import)
    from jaxr1.config import load_config
    cfg = load_config(args.config, args.overrides)
    from jaxr1.dry_run import dry_run, required_devices
    n = required_devices(cfg.parallel)
    if n and args.target == "cpu":  # read when JAX first initialises its backends: one CPU device per mesh position
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    for noisy in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = dry_run(cfg, target=args.target)
    return 0 if report["fits"] else 3


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from jaxr1.errors import run_cli
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_cli(lambda: _dry_run(args) if args.dry_run else train(args), "jaxr1.train")


def train(args) -> int:
    for noisy in ("absl", "jax._src.xla_bridge"):   # orbax's per-save chatter, the TPU probe on CPU hosts
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import jax
    from jaxr1.assets import DEFAULT_CONFIG
    from jaxr1.config import load_config, to_dict
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    from jaxr1.parallel.distributed import gather_json, gather_prompt_batch, initialize_from_env, to_host
    initialize_from_env()   # multi-host: before any other JAX call; a no-op for one process
    is_main = jax.process_index() == 0
    t_start = time.time()
    from jaxr1.parallel import check_batch_layout, make_mesh
    mesh = make_mesh(cfg.parallel.data, cfg.parallel.fsdp, cfg.parallel.tensor)
    layout = check_batch_layout(cfg.data, cfg.rl, mesh.shape, jax.process_count())   # before any slow set-up
    wb = cfg.logging.wandb
    wandb_opts = None
    if wb.project and wb.mode != "disabled":
        # The resolved config (what config.yaml holds) becomes the wandb run config.
        wandb_opts = {"project": wb.project, "entity": wb.entity, "name": wb.name, "mode": wb.mode,
                      "config": to_dict(cfg)}
        if is_main:
            from jaxr1.runlog import require_wandb
            require_wandb()   # a missing wandb fails now, not after the model load

    # --- run directory: whose run it holds decides whether (and from where) this one resumes
    from jaxr1.run_dir import MODEL_FILES, checkpoint_steps, plan_resume, trim_logs, write_config
    run_dir = os.path.abspath(cfg.output_dir)
    resume_step = plan_resume(run_dir, to_dict(cfg), cfg.resume, checkpoint_steps(run_dir), archive=is_main)
    if jax.process_count() > 1:   # process 0 may have moved an old run aside (resume=never)
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxr1.run_dir")
    os.makedirs(run_dir, exist_ok=True)

    # --- model
    from jaxr1.eval import evaluate
    from jaxr1.data.text import eos_ids
    from jaxr1.loading import build_eval_batches, load_policy
    from jaxr1.rewards import reward_specs
    from jaxr1.run_dir import processor_dir
    from jaxr1.rl.learner import Learner
    model, tokenizer, image_processor, model_dir = load_policy(cfg.model, cfg.data)
    log.info("model %s (%s params)", model_dir, f"{sum(x.size for x in jax.tree.leaves(model)):,}")
    if cfg.lora.rank:
        from jaxr1.models.lora import add_lora, adapter_state
        model = add_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target=cfg.lora.target, seed=cfg.seed)
        adapters = jax.tree.leaves(adapter_state(model))
        log.info("LoRA rank %d on %d kernels: %s trainable params", cfg.lora.rank, len(adapters) // 2,
                 f"{sum(x.size for x in adapters):,}")
    if is_main:
        from jaxr1.checkpointing import save_model_files
        write_config(run_dir, to_dict(cfg))
        # What checkpoints/STEP needs beside it to be evaluated or exported on its own.
        save_model_files(model.config, cfg.model.param_dtype, processor_dir(model_dir),
                         os.path.join(run_dir, MODEL_FILES))
    from jaxr1.parallel.rules import check_heads
    check_heads(model.config, mesh)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
    learner = Learner(model, cfg.rl, cfg.optim, cfg.steps, compute_dtype=cfg.model.compute_dtype,
                      remat=cfg.model.remat, freeze_vision=cfg.model.freeze_vision, mesh=mesh)
    state = learner.init(model)
    del model
    # The KL reference (a copy of the initial weights; with LoRA the base itself); never built when beta=0.
    ref_params = learner.reference_params(state) if cfg.rl.beta > 0 else None
    eos = eos_ids(tokenizer)

    # --- data
    from jaxr1.data import build_dataset
    from jaxr1.rl.rollout import max_patches
    dataset = build_dataset(cfg.data, tokenizer, image_processor, process_index=jax.process_index(),
                            process_count=jax.process_count())
    data_iter = iter(dataset)
    next_batch = lambda: gather_prompt_batch(next(data_iter))   # every host's prompts: the global batch
    eval_batches = build_eval_batches(cfg, tokenizer, image_processor)

    # --- rewards
    from jaxr1.rewards import RewardScorer
    scorer = RewardScorer(reward_specs(cfg.rewards), num_workers=cfg.rewards.num_workers,
                          timeout_s=cfg.rewards.timeout_s)
    names = [r.name for r in cfg.rewards.functions]
    # Held-out accuracy is always the verifier's, whatever the training rewards are.
    eval_scorer = RewardScorer(reward_specs(cfg.rewards, only=("accuracy",)), num_workers=cfg.rewards.num_workers,
                               timeout_s=cfg.rewards.timeout_s) if eval_batches else None

    def run_eval(tag: str) -> dict:
        if not eval_batches:
            return {}
        t = time.time()
        with jax.set_mesh(mesh):   # ambient while tracing: a Pallas attention kernel shard_maps over it
            m = evaluate(learner.model(state.params, cfg.model.compute_dtype), eval_batches, tokenizer,
                         eos_token_ids=eos, max_new_tokens=cfg.eval.max_new_tokens,
                         num_samples=cfg.eval.num_samples, temperature=cfg.eval.temperature, scorer=eval_scorer,
                         out_path=os.path.join(run_dir, f"eval_{tag}.jsonl") if is_main else None)
        log.info("eval %s: accuracy %.3f on %d held-out rows (%.0fs)", tag, m["accuracy"], m["num_rows"],
                 time.time() - t)
        return m

    # --- resume: the planned checkpoint (the newest restorable one unless resume=STEP)
    from jaxr1.checkpointing import TrainCheckpointer
    from jaxr1.runlog import RunLog
    ckpt = TrainCheckpointer(run_dir, keep=cfg.keep_checkpoints)
    start_step, before = 1, {}
    restored = None
    if resume_step is not None:
        restored = (ckpt.restore_latest(state) if cfg.resume in ("auto", "force") else ckpt.restore(resume_step, state))
    if restored is not None:
        last, state, meta = restored
        if int(state.step) != last:
            raise RuntimeError(f"checkpoint step {last} holds a learner state of step {int(state.step)}")
        data_iter.set_state(meta["data"][jax.process_index()])
        before, start_step = meta.get("eval_before", {}), last + 1
        if is_main:
            ckpt.delete_after(last)   # a later branch of this run (resume=STEP) is replaced by this one
        log.info("resumed from %s step %d", ckpt.directory, last)
    dropped = trim_logs(run_dir, start_step - 1 if restored is not None else -1) if is_main else 0
    if dropped:
        log.info("dropped %d log rows of steps after %d (they run again)", dropped, start_step - 1)
    runlog = RunLog(run_dir, is_main, first_step=start_step if restored is not None else 0, wandb=wandb_opts)
    if restored is None:
        before = run_eval("before")
        if before:
            runlog.scalars(0, {f"eval/{k}": x for k, x in before.items()})

    def save(step: int, force: bool = False) -> None:
        ckpt.save(step, state, {"step": step, "data": gather_json(data_iter.get_state()), "eval_before": before},
                  force=force)

    # Preemption (SIGTERM from a scheduler, Ctrl-C): finish the step, save, exit 0; the same command resumes.
    import signal
    stop = {"signal": None}

    def on_signal(signum, _frame):
        if stop["signal"] is not None:   # a second Ctrl-C: the user does not want to wait for the save
            log.warning("signal %d again: aborting without saving", signum)
            os._exit(130)
        stop["signal"] = signum
        log.warning("signal %d: saving at the end of this step, then exiting (again to abort)", signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    # --- train loop
    from tqdm import tqdm

    from jaxr1.rl.rollout import sampler_rollout
    from jaxr1.rl.step import StepContext, grpo_step
    rollout = sampler_rollout(learner, cfg.rl, tokenizer=tokenizer, eos_token_ids=eos,
                              compute_dtype=cfg.model.compute_dtype, mesh=mesh)
    ctx = StepContext(cfg, learner, rollout, scorer, next_batch=next_batch, mesh=mesh,
                      micro_batches=layout.micro_batches, patches_per_slot=max_patches(image_processor),
                      ref_params=ref_params)
    bar = tqdm(range(start_step, cfg.steps + 1), desc="grpo", disable=not is_main, dynamic_ncols=True,
               initial=start_step - 1, total=cfg.steps)
    for step in bar:
        with jax.set_mesh(mesh):   # ambient while tracing: a Pallas attention kernel shard_maps over it
            state, metrics, record = grpo_step(state, next_batch(), ctx)
        metrics.update(data_iter.metrics())
        if step % cfg.log_every == 0:
            runlog.scalars(step, metrics)
        if cfg.sample_every and step % cfg.sample_every == 0:
            runlog.sample_rows(step, sample_rows(record, tokenizer, cfg.rl.num_generations, names))
        shown = {"reward": f"{metrics['reward/total_mean']:.3f}", "len": f"{metrics['completion/length_mean']:.0f}"}
        if "accuracy" in metrics:   # only when an accuracy reward is configured
            shown["acc"] = f"{metrics['accuracy']:.2f}"
        bar.set_postfix(shown)
        if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.steps:
            runlog.scalars(step, {f"eval/{k}": x for k, x in run_eval(f"step{step}").items()})
        if stop["signal"] is not None or ckpt.reached_preemption(step):
            save(step, force=True)
            ckpt.close()
            for sc in (scorer, eval_scorer):
                sc and sc.close()
            runlog.close()
            log.warning("preempted: saved step %d to %s; rerun the same command to resume", step, ckpt.directory)
            return 0
        if cfg.save_every and step % cfg.save_every == 0:
            save(step)

    # --- evaluate, save, export
    if start_step <= cfg.steps and ckpt.manager.latest_step() != cfg.steps:
        save(cfg.steps, force=True)
    ckpt.close()
    after = run_eval("after")
    if after:
        runlog.scalars(cfg.steps, {f"eval/{k}": x for k, x in after.items()})
    for sc in (scorer, eval_scorer):
        sc and sc.close()
    runlog.close()
    # Every process joins the (collective) saves; only process 0 writes files that are not orbax's.
    from jaxr1.checkpointing import save_model
    from jaxr1.models import save_hf
    final = learner.export_model(state.params)   # LoRA: adapters merged in the master dtype
    save_model(final, os.path.join(run_dir, "checkpoint"), source_dir=model_dir, primary=is_main)
    if cfg.export_hf:
        from flax import nnx
        graphdef, params = nnx.split(final, nnx.Param)
        host = jax.tree.map(to_host, params)      # gathers shards from every host
        adapter = jax.tree.map(to_host, state.params) if learner.lora else None
        if is_main:
            save_hf(nnx.merge(graphdef, host), os.path.join(run_dir, "hf"), source_dir=model_dir)
            if adapter is not None:   # the adapter alone, for peft.PeftModel.from_pretrained(base, RUN/adapter)
                from jaxr1.models.peft import save_peft_adapter
                save_peft_adapter(learner.model(adapter), os.path.join(run_dir, "adapter"), base_model=model_dir)
    print(f"run directory: {run_dir} ({time.time() - t_start:.0f}s)")
    if before and after:
        print(f"held-out accuracy: before {before['accuracy']:.2f} after {after['accuracy']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
