"""One GRPO step at a time, alternately in jaxr1 (`python -m jaxr1.train`) and TRL's GRPOTrainer, with the
completion lengths forced through EOS so both sides generate and train on the same number of tokens.

Each side runs in its own spawned process (no JAX in the one that times PyTorch) and blocks before each
optimizer step until the coordinator says go, so the two never run at once and both see the same machine
load; the timed steps alternate ABBA. Lengths: step k's row r stops after exactly lengths[k][r] tokens (EOS
included). jaxr1: its own CLI and train loop, with the rollout asking the sampler for max(lengths[k]) new
tokens and cutting each row at its length (the sampler runs every row until the longest stops either way);
TRL: a logits processor that forbids EOS before the row's length and forces it there. TRL's torch thread
count is 1 or all cores, whichever runs a probe forward faster just before each timed step.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EOS = "<|im_end|>"


@dataclasses.dataclass
class Shape:
    prompts: int
    generations: int
    max_completion_length: int
    beta: float = 0.04
    lr: float = 1e-6
    seed: int = 0
    trl_micro_rows: int = 0        # TRL rows per forward/backward (0: all rows of the step at once)


# ----------------------------------------------------------------------------------------------- jaxr1
def _jaxr1_worker(conn, overrides: list[str], lengths: list[np.ndarray]):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    import jaxr1.rl.rollout as rollout_mod
    import jaxr1.rl.step as step_mod
    from jaxr1 import train
    from jaxr1.sampling import STOP_EOS
    real_step, real_rollout = step_mod.grpo_step, rollout_mod.sampler_rollout
    count = {"rollout": 0}

    def forced_rollout(learner, rl, *, tokenizer, eos_token_ids, **kw):
        eos = tokenizer.convert_tokens_to_ids(EOS)

        def rollout(params, batch, seed):
            want = lengths[count["rollout"]]
            count["rollout"] += 1
            short = dataclasses.replace(rl, max_completion_length=int(want.max()))
            r = real_rollout(learner, short, tokenizer=tokenizer, eos_token_ids=eos_token_ids, **kw)(params, batch,
                                                                                                      seed)
            cols = np.arange(rl.max_completion_length)[None]
            pad = lambda x, v: np.pad(x, ((0, 0), (0, rl.max_completion_length - x.shape[1])), constant_values=v)
            tokens = np.where(cols < want[:, None], pad(r.tokens, 0), tokenizer.pad_token_id or 0)
            tokens[np.arange(len(want)), want - 1] = eos
            logprobs = np.where(cols < want[:, None], pad(r.logprobs, 0.0), 0.0)
            texts = [tokenizer.decode(t[:n]) for t, n in zip(tokens, want)]
            return rollout_mod.Rollout(tokens, want.astype(np.int32), logprobs.astype(np.float32),
                                       np.full(len(want), STOP_EOS, np.int32), texts)
        return rollout

    def gated_step(state, batch, ctx):
        conn.recv()
        t0 = time.perf_counter()
        state, metrics, record = real_step(state, batch, ctx)
        jax.block_until_ready(state.params)
        conn.send(dict(wall=time.perf_counter() - t0, sample=metrics["time/sample_s"], train=metrics["time/train_s"],
                       length=metrics["completion/length_mean"], fill=metrics.get("completion/train_token_fill")))
        return state, metrics, record

    step_mod.grpo_step, rollout_mod.sampler_rollout = gated_step, forced_rollout
    train.grpo_step, train.sampler_rollout = gated_step, forced_rollout   # train.py imports them by name
    conn.send("ready")
    rc = train.main(overrides)
    conn.send(dict(done=rc))


def jaxr1_overrides(model_dir, data_path, run_dir, shape: Shape, steps: int) -> list[str]:
    return [f"model.path={model_dir}", f"data.path={data_path}", f"data.batch_size={shape.prompts}",
            f"rl.num_generations={shape.generations}", f"rl.max_completion_length={shape.max_completion_length}",
            f"rl.beta={shape.beta}", "rl.temperature=1.0", "rl.loss_aggregation=token_mean", "rl.scale_rewards=group",
            "rewards.functions=[{name: accuracy, weight: 1.0}]", f"optim.lr={shape.lr}", f"steps={steps}",
            f"seed={shape.seed}", f"output_dir={run_dir}", "export_hf=false", "sample_every=0", "data.num_eval=0",
            "eval.every=0", "save_every=0"]


# ----------------------------------------------------------------------------------------------- TRL
def _trl_worker(conn, model_dir, data_path, run_dir, shape: Shape, lengths: list[np.ndarray], steps: int):
    import torch
    import transformers
    import trl
    from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench_grpo_step import make_processor, trl_dataset
    from jaxr1.rewards.functions import accuracy_reward
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    processor = make_processor(model_dir)
    dataset = trl_dataset(data_path, processor)
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids(EOS)
    stops = sorted({eos, tok.convert_tokens_to_ids("<|endoftext|>")})
    state = {"step": 0, "offset": 0, "threads": cores, "t0": None, "sample": 0.0}

    def accuracy(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in accuracy_reward(texts, [{"answer": a} for a in answer])]

    class Force(LogitsProcessor):
        """Row r of the step's generation stops after exactly lengths[step][r] tokens."""
        def __call__(self, input_ids, scores):
            want = torch.as_tensor(lengths[state["step"]][state["offset"]: state["offset"] + scores.shape[0]])
            n = input_ids.shape[1] - state["prompt_len"] + 1        # the length if this token is the last
            scores = scores.clone()
            early = (n < want).nonzero().flatten()
            scores[early[:, None], torch.as_tensor(stops)[None]] = -float("inf")
            now = (n == want).nonzero().flatten()
            scores[now] = -float("inf")
            scores[now, eos] = 0.0
            return scores

    config = GRPOConfig(
        output_dir=run_dir, num_generations=shape.generations, max_completion_length=shape.max_completion_length,
        per_device_train_batch_size=shape.trl_micro_rows or shape.prompts * shape.generations,
        gradient_accumulation_steps=(shape.prompts * shape.generations) // (shape.trl_micro_rows or
                                                                            shape.prompts * shape.generations),
        num_iterations=1, beta=shape.beta, temperature=1.0, top_p=1.0, top_k=0, loss_type="dapo",
        scale_rewards="group", epsilon=0.2, learning_rate=shape.lr, lr_scheduler_type="constant", max_steps=steps,
        seed=shape.seed, use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, report_to=[], logging_steps=1, save_strategy="no",
        disable_tqdm=True, log_completions=False)
    config.steps_per_generation = config.gradient_accumulation_steps   # one generation per optimizer step

    def probe(model):
        """Seconds of a small forward at 1 and all threads; keep the faster."""
        ids = torch.randint(10, 500, (8, 64))
        best = {}
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            with torch.no_grad():
                model(input_ids=ids)
                t0 = time.perf_counter()
                model(input_ids=ids)
                best[threads] = time.perf_counter() - t0
        state["threads"] = min(best, key=best.get)
        torch.set_num_threads(state["threads"])

    class Gate(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_train_begin(self, _a, _s, _c, model=None, **k):
            conn.recv()
            state["t0"] = time.perf_counter()

        def on_log(self, _a, _s, _c, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

        def on_step_end(self, _a, _s, _c, model=None, **k):
            conn.send(dict(wall=time.perf_counter() - state["t0"], sample=state["sample"],
                           threads=state["threads"], length=self.logs[-1]["completions/mean_length"] if self.logs
                           else float("nan")))
            state["step"] += 1
            if state["step"] < steps:
                conn.recv()
                probe(model)
                state["t0"] = time.perf_counter()

    gate = Gate()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=[accuracy], args=config, train_dataset=dataset,
                          processing_class=processor, callbacks=[gate])
    model = trainer.model
    real_generate, real_gen = model.generate, trainer._generate

    def generate(*a, **k):
        ids = k.get("input_ids", a[0] if a else None)
        state["prompt_len"] = ids.shape[1]
        out = real_generate(*a, logits_processor=LogitsProcessorList([Force()]), **k)
        state["offset"] += ids.shape[0]
        return out

    def timed_generate(*a, **k):
        state["offset"] = 0
        t0 = time.perf_counter()
        out = real_gen(*a, **k)
        state["sample"] = time.perf_counter() - t0
        return out
    model.generate, trainer._generate = generate, timed_generate
    conn.send(dict(ready=f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"))
    trainer.train()
    conn.send(dict(done=0))


# ----------------------------------------------------------------------------------------------- both
def interleave(model_dir: str, data_path: str, tmp: str, shape: Shape, lengths: list[np.ndarray],
               log=print) -> dict:
    """Step 0 is each side's warm-up (jaxr1: compilation); steps 1.. are timed, alternating which side goes
    first. Returns per-side lists of step records."""
    steps = len(lengths)
    ctx = multiprocessing.get_context("spawn")
    j_conn, j_child = ctx.Pipe()
    t_conn, t_child = ctx.Pipe()
    j = ctx.Process(target=_jaxr1_worker, args=(j_child, jaxr1_overrides(model_dir, data_path, os.path.join(tmp, "j"),
                                                                        shape, steps), lengths))
    t = ctx.Process(target=_trl_worker, args=(t_child, model_dir, data_path, os.path.join(tmp, "t"), shape, lengths,
                                              steps))
    j.start()
    t.start()
    assert j_conn.recv() == "ready"
    versions = t_conn.recv()["ready"]
    out = {"jaxr1": [], "trl": [], "trl_versions": versions}
    sides = {"jaxr1": j_conn, "trl": t_conn}
    for k in range(steps):
        order = ["jaxr1", "trl"] if k % 2 == 0 else ["trl", "jaxr1"]
        for name in order:
            sides[name].send("go")
            rec = sides[name].recv()
            if "done" in rec:
                raise SystemExit(f"{name} ended early: {rec}")
            rec["load"] = os.getloadavg()[0]
            out[name].append(rec)
            log(f"  step {k} {name}: {json.dumps({a: round(b, 3) if isinstance(b, float) else b for a, b in rec.items()})}")
    for p in (j, t):
        p.join(timeout=120)
        if p.is_alive():
            p.terminate()
    return out
