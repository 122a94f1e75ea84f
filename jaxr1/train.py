"""python -m jaxr1.train [--config FILE.yaml] [key.sub=value ...]

GRPO (and family) on Qwen2.5-VL, top to bottom: set up, model, data, rewards, evaluate, train loop, save.
Without --config it runs the embedded default (jaxr1/assets/default.yaml, overrides still apply): the embedded
tiny checkpoint (SFT-warm-started) on synthetic counting scenes, printing held-out accuracy before and after RL.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time

import numpy as np

log = logging.getLogger("jaxr1.train")


# ----------------------------------------------------------------------------------------------- set up
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m jaxr1.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML file (default: the embedded default)")
    ap.add_argument("--dry_run", action="store_true", help="build and compile, report memory, do not train")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.num_generations=8 optim.lr=1e-6")
    return ap.parse_args(argv)


def refill_groups(batch, roll, rollout, seed, data_iter, scorer, G, Tc, cfg):
    """DAPO dynamic sampling: replace zero-variance groups with non-zero-variance groups sampled from further
    batches (at most rl.max_refill_rounds); groups still missing after that are kept (their advantage is 0)."""
    from jaxr1.parallel.distributed import gather_prompt_batch
    from jaxr1.rl.advantages import zero_variance_groups
    from jaxr1.rl.rollout import select_rows

    def informative(b, r):
        examples = [ex for ex in b.examples for _ in range(G)]
        total = scorer.score(r["texts"], examples, completion_lengths=r["lengths"], max_completion_length=Tc).total
        return ~np.asarray(zero_variance_groups(np.asarray(total, np.float32), G)) & b.valid

    keep = informative(batch, roll)
    batches, rolls = [batch], [roll]
    picks = [(0, i) for i in np.flatnonzero(keep)]
    dropped = int((~keep).sum())
    for round_ in range(cfg.rl.max_refill_rounds):
        if len(picks) >= len(keep):
            break
        extra = gather_prompt_batch(next(data_iter))
        extra_roll = rollout(extra, seed + 7919 * (round_ + 1))
        batches.append(extra)
        rolls.append(extra_roll)
        picks += [(len(batches) - 1, i) for i in np.flatnonzero(informative(extra, extra_roll))]
    picks = picks[:len(keep)]
    picks += [(0, i) for i in np.flatnonzero(~keep)][:len(keep) - len(picks)]   # not enough: keep some zero groups
    rows = lambda b, i: slice(i * G, (i + 1) * G)
    merged = {k: np.concatenate([rolls[b][k][rows(b, i)] for b, i in picks])
              for k in ("tokens", "lengths", "logprobs", "stop_reason")}
    merged["texts"] = [t for b, i in picks for t in rolls[b]["texts"][rows(b, i)]]
    return select_rows(batches, picks), merged, dropped


def _dry_run(args) -> int:
    """Compile everything for the configured shapes and mesh on forced host devices; print memory and FLOPs."""
    from jaxr1.config import load_config
    cfg = load_config(args.config, args.overrides)
    from jaxr1.dry_run import dry_run, required_devices
    n = required_devices(cfg.parallel)
    if n:  # read when JAX first initialises its backends (below): one CPU device per mesh position
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for noisy in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = dry_run(cfg)
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
    import yaml

    from jaxr1.assets import DEFAULT_CONFIG
    from jaxr1.config import load_config, to_dict
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    from jaxr1.parallel.distributed import gather_json, gather_prompt_batch, initialize_from_env, to_host
    initialize_from_env()   # multi-host: before any other JAX call; a no-op for one process
    is_main = jax.process_index() == 0
    t_start = time.time()
    from jaxr1.parallel import check_batch_layout, make_mesh, shard_batch
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
    from jaxr1.loading import RUN_MODEL_FILES, train_checkpoint_steps
    from jaxr1.run_dir import plan_resume, trim_logs
    run_dir = os.path.abspath(cfg.output_dir)
    resume_step = plan_resume(run_dir, to_dict(cfg), cfg.resume, train_checkpoint_steps(run_dir), archive=is_main)
    if jax.process_count() > 1:   # process 0 may have moved an old run aside (resume=never)
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxr1.run_dir")
    os.makedirs(run_dir, exist_ok=True)

    # --- model
    from jaxr1.eval import evaluate
    from jaxr1.loading import (build_eval_batches, decode_completions, eos_ids, load_policy, processor_dir,
                               reward_specs)
    from jaxr1.rl.learner import Learner, MicroBatch
    model, tokenizer, image_processor, model_dir = load_policy(cfg.model, cfg.data)
    log.info("model %s (%s params)", model_dir, f"{sum(x.size for x in jax.tree.leaves(model)):,}")
    if is_main:
        from jaxr1.checkpointing import save_model_files
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        # What checkpoints/STEP needs beside it to be evaluated or exported on its own.
        save_model_files(model.config, cfg.model.param_dtype, processor_dir(model_dir),
                         os.path.join(run_dir, RUN_MODEL_FILES))
    from jaxr1.parallel.rules import check_heads
    check_heads(model.config, mesh)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
    learner = Learner(model, cfg.rl, cfg.optim, cfg.steps, compute_dtype=cfg.model.compute_dtype,
                      remat=cfg.model.remat, freeze_vision=cfg.model.freeze_vision, mesh=mesh)
    del model
    # Frozen initial weights (a copy: the learner donates its own buffers); never built when beta=0.
    ref_params = jax.tree.map(lambda x: x.copy(), learner.params) if cfg.rl.beta > 0 else None
    eos = eos_ids(tokenizer)

    # --- data
    from jaxr1.data import build_dataset
    from jaxr1.rl.rollout import max_patches, model_inputs, split_prompts
    dataset = build_dataset(cfg.data, tokenizer, image_processor, process_index=jax.process_index(),
                            process_count=jax.process_count())
    data_iter = iter(dataset)
    patches_per_slot = max_patches(image_processor)
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
        m = evaluate(learner.model(cfg.model.compute_dtype), eval_batches, tokenizer, eos_token_ids=eos,
                     max_new_tokens=cfg.eval.max_new_tokens, num_samples=cfg.eval.num_samples,
                     temperature=cfg.eval.temperature, scorer=eval_scorer,
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
        state = {"params": learner.params, "opt_state": learner.opt_state}
        restored = (ckpt.restore_latest(state) if cfg.resume in ("auto", "force") else ckpt.restore(resume_step, state))
    if restored is not None:
        last, state, meta = restored
        learner.params, learner.opt_state = state["params"], state["opt_state"]
        learner.skipped_updates = int(meta.get("skipped_updates", 0))
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
        ckpt.save(step, {"params": learner.params, "opt_state": learner.opt_state},
                  {"step": step, "data": gather_json(data_iter.get_state()), "skipped_updates": learner.skipped_updates,
                   "eval_before": before}, force=force)

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

    from jaxr1.rl.advantages import compute_advantages
    from jaxr1.rl.losses import compute_loss_normalizer
    from jaxr1.rl.trim import trimmed_length
    from jaxr1.sampling import STOP_LENGTH, generate
    G, Tc = cfg.rl.num_generations, cfg.rl.max_completion_length
    n_mb = layout.micro_batches
    bar = tqdm(range(start_step, cfg.steps + 1), desc="grpo", disable=not is_main, dynamic_ncols=True,
               initial=start_step - 1, total=cfg.steps)
    for step in bar:
        t0 = time.time()
        batch = gather_prompt_batch(next(data_iter))   # every host's prompts: the global batch
        policy = learner.model(cfg.model.compute_dtype)

        def rollout(batch, seed):
            gen = generate(policy, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw,
                           max_new_tokens=Tc, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p,
                           top_k=cfg.rl.top_k, num_samples=G, eos_token_ids=eos, seed=seed)
            out = {k: to_host(getattr(gen, k)) for k in ("tokens", "lengths", "logprobs", "stop_reason")}
            out["texts"] = decode_completions(tokenizer, out["tokens"], out["lengths"])
            return out

        seed = cfg.seed * 1_000_003 + step
        roll = rollout(batch, seed)
        t_sample = time.time() - t0
        dropped_groups = 0
        if cfg.rl.dynamic_sampling:
            # DAPO: groups whose rewards all agree carry no signal; swap them for groups of fresh prompts.
            batch, roll, dropped_groups = refill_groups(batch, roll, rollout, seed, data_iter, scorer, G, Tc, cfg)
        tokens, lengths, sampler_logprobs = roll["tokens"], roll["lengths"], roll["logprobs"]
        gen_stop = roll["stop_reason"]

        # Rewards run in worker processes while the device recomputes old/reference log-probs.
        t1 = time.time()
        texts = roll["texts"]
        examples = [ex for ex in batch.examples for _ in range(G)]
        future = scorer.submit(texts, examples, completion_lengths=lengths, max_completion_length=Tc)
        valid_rows = np.repeat(batch.valid, G)
        # The training passes see completions cut to this step's longest (bucketed): cost follows real tokens.
        Tt = trimmed_length(lengths, Tc) if cfg.rl.trim_completions else Tc
        tokens, sampler_logprobs = tokens[:, :Tt], sampler_logprobs[:, :Tt]
        mask = ((np.arange(Tt)[None] < lengths[:, None]) & valid_rows[:, None]).astype(np.int32)
        chunks = split_prompts(batch, n_mb)
        mbs = []
        per = layout.mb_rows
        for c, chunk in enumerate(chunks):
            inputs, deltas = model_inputs(policy.config, chunk, patches_per_slot=patches_per_slot)
            rows = slice(c * per, (c + 1) * per)
            mb = shard_batch(MicroBatch(inputs, deltas, tokens[rows], mask[rows], np.zeros(per, np.float32)), mesh)
            if cfg.rl.num_iterations > 1:   # else the update's own forward gives them (on-policy)
                mb.old_logprobs = learner.logprobs(learner.params, mb)
            if ref_params is not None:
                mb.ref_logprobs = learner.logprobs(ref_params, mb)
            mbs.append(mb)
        rewards = future.result()
        jax.block_until_ready([(mb.old_logprobs, mb.ref_logprobs) for mb in mbs])
        t_reward = time.time() - t1   # rewards and old/reference log-probs, overlapped

        t2 = time.time()
        total = np.where(valid_rows, rewards.total, 0.0).astype(np.float32)
        kw = {"scale_rewards": cfg.rl.scale_rewards} if cfg.rl.algorithm == "grpo" else {}
        adv, adv_stats = compute_advantages(cfg.rl.algorithm, total, G, **kw)
        adv = to_host(adv)
        for c, mb in enumerate(mbs):
            mb.advantages = shard_batch(adv[c * per:(c + 1) * per], mesh)
        normalizer = float(compute_loss_normalizer(mask, cfg.rl.loss_aggregation))
        for _ in range(cfg.rl.num_iterations):
            train_metrics = learner.update(mbs, normalizer)
        t_train = time.time() - t2

        # --- metrics
        old = np.concatenate([to_host(mb.old_logprobs) for mb in mbs])
        gap = np.abs(old - sampler_logprobs)[mask > 0]
        v = valid_rows
        metrics = {f"reward/{k}": float(np.mean(rewards.per_function[k][v])) for k in names}
        metrics.update({
            "reward/total_mean": float(total[v].mean()), "reward/total_std": float(total[v].std()),
            "completion/length_mean": float(lengths[v].mean()), "completion/length_max": float(lengths[v].max()),
            "completion/truncated_frac": float(np.mean(gen_stop[v] == STOP_LENGTH)),
            "completion/trained_length": float(Tt),
            "rl/dynamic_sampling_refilled_groups": float(dropped_groups),
            "rl/zero_std_frac": float(adv_stats.get("zero_std_frac", 0.0)),
            "rl/sampler_trainer_logprob_gap": float(gap.mean()) if gap.size else 0.0,
            "rl/sampler_trainer_logprob_gap_max": float(gap.max()) if gap.size else 0.0,
            "optim/lr": float(learner.schedule(step - 1)),
            "time/sample_s": t_sample, "time/reward_s": t_reward, "time/train_s": t_train,
            "time/step_s": time.time() - t0,
            "throughput/tokens_per_s": float(lengths[v].sum()) / max(t_sample, 1e-9),
            **{f"reward_stats/{k}": float(x) for k, x in rewards.stats.items() if np.isscalar(x)},
            **{f"train/{k}": float(x) for k, x in train_metrics.items()},
            **data_iter.metrics(),
        })
        if "accuracy" in rewards.per_function:
            metrics["accuracy"] = metrics["reward/accuracy"]
        if "format" in rewards.per_function:
            metrics["format_rate"] = metrics["reward/format"]
        if step % cfg.log_every == 0:
            runlog.scalars(step, metrics)
        if cfg.sample_every and step % cfg.sample_every == 0:
            runlog.sample_rows(step, [
                {"prompt": tokenizer.decode(batch.input_ids[i // G][batch.attention_mask[i // G] > 0]),
                 "images": batch.examples[i // G].get("source"), "row": batch.examples[i // G].get("row"),
                 "answer": batch.examples[i // G].get("answer"), "completion": texts[i],
                 **{k: float(rewards.per_function[k][i]) for k in names}} for i in range(0, len(texts), G)])
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
    save_model(learner.model(), os.path.join(run_dir, "checkpoint"), source_dir=model_dir, primary=is_main)
    if cfg.export_hf:
        host = jax.tree.map(to_host, learner.params)      # gathers shards from every host
        if is_main:
            from flax import nnx
            save_hf(nnx.merge(learner.graphdef, host), os.path.join(run_dir, "hf"), source_dir=model_dir)
    print(f"run directory: {run_dir} ({time.time() - t_start:.0f}s)")
    if before and after:
        print(f"held-out accuracy: before {before['accuracy']:.2f} after {after['accuracy']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
