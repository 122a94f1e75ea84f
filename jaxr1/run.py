"""What a training run keeps beside the learner state: its directory's checkpoints and logs, the data iterator,
the scorers, the held-out evaluation and a stop request. train.py's loop calls it to evaluate, save, log,
export and close; the learner state stays in the loop and is passed in."""
from __future__ import annotations

import logging
import os
import signal
import time

import jax
from flax import nnx

from jaxr1.checkpointing import TrainCheckpointer, save_model, save_model_files
from jaxr1.eval import evaluate
from jaxr1.models import save_hf
from jaxr1.models.peft import save_peft_adapter
from jaxr1.parallel.distributed import gather_json, gather_prompt_batch, to_host
from jaxr1.run_dir import ADAPTER, FINAL, HF, MODEL_FILES, processor_dir, trim_logs, write_config
from jaxr1.runlog import RunLog

log = logging.getLogger("jaxr1.train")


class Run:
    def __init__(self, cfg, run_dir: str, setup, *, data_iter, eval_batches, scorer, eval_scorer, eos,
                 is_main: bool):
        self.cfg, self.run_dir, self.setup, self.is_main = cfg, run_dir, setup, is_main
        self.data_iter, self.eval_batches, self.eos = data_iter, eval_batches, eos
        self.scorer, self.eval_scorer = scorer, eval_scorer
        self.ckpt = TrainCheckpointer(run_dir, keep=cfg.keep_checkpoints)
        self.runlog, self.before, self.stop_signal = None, {}, None

    def next_batch(self):
        """Every host's prompts: the global batch."""
        return gather_prompt_batch(next(self.data_iter))

    # --- start: the run directory's files, the planned checkpoint, the logs
    def write_files(self, cfg_dict: dict) -> None:
        """config.yaml, and what checkpoints/STEP needs beside it to be evaluated or exported on its own."""
        if self.is_main:
            s = self.setup
            write_config(self.run_dir, cfg_dict)
            save_model_files(s.learner.model_config, self.cfg.model.param_dtype, processor_dir(s.model_dir),
                             os.path.join(self.run_dir, MODEL_FILES))

    def resume(self, state, resume_step: int | None, wandb_opts: dict | None):
        """(state, first step): the planned checkpoint restored (the newest restorable one unless resume=STEP),
        or `state` and 1; opens the logs, past the restored step."""
        restored = None
        if resume_step is not None:
            restored = (self.ckpt.restore_latest(state) if self.cfg.resume in ("auto", "force")
                        else self.ckpt.restore(resume_step, state))
        start_step = 1
        if restored is not None:
            last, state, meta = restored
            if int(state.step) != last:
                raise RuntimeError(f"checkpoint step {last} holds a learner state of step {int(state.step)}")
            self.data_iter.set_state(meta["data"][jax.process_index()])
            self.before, start_step = meta.get("eval_before", {}), last + 1
            if self.is_main:
                self.ckpt.delete_after(last)   # a later branch of this run (resume=STEP) is replaced by this one
            log.info("resumed from %s step %d", self.ckpt.directory, last)
        dropped = trim_logs(self.run_dir, start_step - 1 if restored is not None else -1) if self.is_main else 0
        if dropped:
            log.info("dropped %d log rows of steps after %d (they run again)", dropped, start_step - 1)
        self.runlog = RunLog(self.run_dir, self.is_main, first_step=start_step if restored is not None else 0,
                             wandb=wandb_opts)
        if restored is None:
            self.before = self.evaluate(state, "before", step=0)
        return state, start_step

    # --- during the run
    def evaluate(self, state, tag: str, step: int) -> dict:
        """Held-out accuracy (always the verifier's), logged as eval/ scalars at `step`; {} without an eval split."""
        if not self.eval_batches:
            return {}
        s, cfg, t = self.setup, self.cfg, time.time()
        with jax.set_mesh(s.mesh):   # ambient while tracing: a Pallas attention kernel shard_maps over it
            m = evaluate(s.learner.model(state.params, cfg.model.compute_dtype), self.eval_batches, s.tokenizer,
                         eos_token_ids=self.eos, max_new_tokens=cfg.eval.max_new_tokens,
                         num_samples=cfg.eval.num_samples, temperature=cfg.eval.temperature,
                         scorer=self.eval_scorer,
                         out_path=os.path.join(self.run_dir, f"eval_{tag}.jsonl") if self.is_main else None)
        log.info("eval %s: accuracy %.3f on %d held-out rows (%.0fs)", tag, m["accuracy"], m["num_rows"],
                 time.time() - t)
        self.runlog.scalars(step, {f"eval/{k}": x for k, x in m.items()})
        return m

    def log_step(self, step: int, metrics: dict, record) -> None:
        cfg = self.cfg
        if step % cfg.log_every == 0:
            self.runlog.scalars(step, metrics)
        if cfg.sample_every and step % cfg.sample_every == 0:
            self.runlog.sample_rows(step, sample_rows(record, self.setup.tokenizer, cfg.rl.num_generations,
                                                      [r.name for r in cfg.rewards.functions]))

    def save(self, step: int, state, force: bool = False) -> None:
        meta = {"step": step, "data": gather_json(self.data_iter.get_state()), "eval_before": self.before}
        self.ckpt.save(step, state, meta, force=force)

    # Preemption (SIGTERM from a scheduler, Ctrl-C): finish the step, save, exit 0; the same command resumes.
    def catch_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_signal is not None:   # a second Ctrl-C: the user does not want to wait for the save
            log.warning("signal %d again: aborting without saving", signum)
            os._exit(130)
        self.stop_signal = signum
        log.warning("signal %d: saving at the end of this step, then exiting (again to abort)", signum)

    def stopping(self, step: int) -> bool:
        return self.stop_signal is not None or self.ckpt.reached_preemption(step)

    # --- end
    def close(self) -> None:
        self.ckpt.close()
        for sc in (self.scorer, self.eval_scorer):
            sc and sc.close()
        self.runlog.close()

    def export(self, state) -> None:
        """The final policy as a jaxr1 checkpoint (and with export_hf an HF directory, plus a LoRA run's adapter).
        Every process joins the (collective) saves; only process 0 writes files that are not orbax's."""
        learner, model_dir = self.setup.learner, self.setup.model_dir
        final = learner.export_model(state.params)   # LoRA: adapters merged in the master dtype
        save_model(final, os.path.join(self.run_dir, FINAL), source_dir=model_dir, primary=self.is_main)
        if not self.cfg.export_hf:
            return
        graphdef, params = nnx.split(final, nnx.Param)
        host = jax.tree.map(to_host, params)      # gathers shards from every host
        adapter = jax.tree.map(to_host, state.params) if learner.lora else None
        if self.is_main:
            save_hf(nnx.merge(graphdef, host), os.path.join(self.run_dir, HF), source_dir=model_dir)
            if adapter is not None:   # the adapter alone, for peft.PeftModel.from_pretrained(base, RUN/adapter)
                save_peft_adapter(learner.model(adapter), os.path.join(self.run_dir, ADAPTER), base_model=model_dir)


def sample_rows(record, tokenizer, num_generations: int, names: list[str]) -> list[dict]:
    """samples.jsonl / wandb rows: each prompt's first completion with its rewards."""
    batch, texts, per_function = record.batch, record.rollout.texts, record.rewards.per_function
    rows = []
    for i in range(0, len(texts), num_generations):
        p, ex = i // num_generations, record.batch.reward_inputs[i // num_generations]
        rows.append({"prompt": tokenizer.decode(batch.input_ids[p][batch.attention_mask[p] > 0]),
                     "images": ex.get("source"), "row": ex.get("row"), "answer": ex.get("answer"),
                     "completion": texts[i], **{k: float(per_function[k][i]) for k in names}})
    return rows
