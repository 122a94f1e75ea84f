"""One full GRPO step (sample + reward + update): jaxr1 vs TRL's GRPOTrainer (PyTorch, CPU), same model and data.

    python scripts/bench_grpo_step.py                      # small preset (results in benchmarks/RESULTS.md)
    python scripts/bench_grpo_step.py --preset tiny        # the embedded ~1M-parameter checkpoint

Both sides load the same HF checkpoint directory (small: a random Qwen2.5-VL that jaxr1 writes with the tiny
checkpoint's tokenizer and image processor) and train on the same synthetic counting scenes (R1-V rows, one
224px image each, the R1 system prompt; the script checks that both tokenize a prompt to the same ids). One
optimizer step is B prompts x G samples of up to L new tokens (temperature 1, stop on <|im_end|> /
<|endoftext|>), accuracy reward, group-scaled advantages, token-mean clipped loss, KL to the reference with
weight beta, one update over the whole batch (no micro-batching, no remat / gradient checkpointing), fp32.
jaxr1 runs as `python -m jaxr1.train` (its per-step `time/step_s`); TRL runs in its own process (no JAX there),
timed from one optimizer-step end to the next. Step 1 is warm-up on both sides (jaxr1: compilation).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PRESETS = {
    "tiny": None,  # jaxr1.assets.TINY_MODEL_DIR: text 4 x 128, vision 4 x 64, vocab 606
    # Big enough to be compute-bound on a CPU, small enough for a few TRL steps in minutes.
    "small": dict(text=dict(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                            num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12),
                            rope_theta=10000.0, max_position_embeddings=4096),
                  vision=dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, window_size=112,
                              fullatt_block_indexes=(1, 3))),
}


def make_model_dir(preset: str, out_dir: str, seed: int) -> str:
    """The HF checkpoint both trainers load. TRL reloads its reference model from this path, so it is on disk."""
    from jaxr1.assets import TINY_MODEL_DIR
    if PRESETS[preset] is None:
        return TINY_MODEL_DIR
    from flax import nnx
    from transformers import AutoTokenizer

    from jaxr1.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, TextConfig, VisionConfig, save_hf
    tok = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                     "<|vision_end|>", "<|endoftext|>", "<|im_end|>")}
    p = PRESETS[preset]
    text = TextConfig(**p["text"])
    cfg = ModelConfig(text=text, vision=VisionConfig(**p["vision"], out_hidden_size=text.hidden_size),
                      tie_word_embeddings=False, image_token_id=ids["<|image_pad|>"],
                      video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                      vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
                      eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    save_hf(Qwen2_5_VL(cfg, rngs=nnx.Rngs(seed)), out_dir, source_dir=TINY_MODEL_DIR)
    with open(os.path.join(TINY_MODEL_DIR, "generation_config.json")) as f, \
            open(os.path.join(out_dir, "generation_config.json"), "w") as g:
        g.write(f.read())
    return out_dir


def describe(model_dir: str) -> str:
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    t, v = c.get("text_config", c), c["vision_config"]
    return (f"text {t['num_hidden_layers']} x {t['hidden_size']} (ffn {t['intermediate_size']}, heads "
            f"{t['num_attention_heads']}/{t['num_key_value_heads']}), vocab {t['vocab_size']}; vision {v['depth']} x "
            f"{v['hidden_size']}")


# ----------------------------------------------------------------------------------------------- jaxr1
def run_jaxr1(model_dir: str, data_path: str, run_dir: str, args) -> dict:
    """`python -m jaxr1.train` in its own process; per-step figures from its metrics.jsonl."""
    overrides = [
        f"model.path={model_dir}", f"data.path={data_path}", f"data.batch_size={args.batch}",
        f"rl.num_generations={args.generations}", f"rl.max_completion_length={args.max_completion_length}",
        f"rl.beta={args.beta}", "rl.temperature=1.0", "rl.loss_aggregation=token_mean", "rl.scale_rewards=group",
        "rewards.functions=[{name: accuracy, weight: 1.0}]", f"optim.lr={args.lr}", f"steps={args.steps + 1}",
        f"seed={args.seed}", f"output_dir={run_dir}", "export_hf=false", "sample_every=0",
    ]
    log_path = run_dir + ".log"
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, "-m", "jaxr1.train", *overrides], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TQDM_DISABLE": "1"}).returncode
    if rc != 0:
        with open(log_path) as f:
            raise SystemExit(f"jaxr1.train failed (exit code {rc}):\n{f.read()[-4000:]}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "time/step_s" in r]
    steady = rows[1:]
    return dict(first=rows[0]["time/step_s"], steps=[r["time/step_s"] for r in steady],
                sample=float(np.mean([r["time/sample_s"] for r in steady])),
                length=float(np.mean([r["completion/length_mean"] for r in steady])))


# ----------------------------------------------------------------------------------------------- TRL
def make_processor(model_dir: str):
    """A Qwen2.5-VL processor of the image processor and the tokenizer only: the stock class also wants a video
    processor, which needs torchvision (absent here). TRL calls apply_chat_template, __call__ and batch_decode."""
    from transformers import ProcessorMixin
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    from jaxr1.data import load_processors

    class ImageTextProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tokenizer, image_processor = load_processors(model_dir)
    tokenizer.padding_side = "left"
    return ImageTextProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)


def trl_dataset(data_path: str, processor):
    """TRL rows {prompt, image, answer} made by jaxr1's own preprocessing, checked token for token."""
    from datasets import Dataset
    from trl.data_utils import prepare_multimodal_messages

    from jaxr1.data import Preprocessor, R1_SYSTEM_PROMPT, RawRow
    from jaxr1.data.images import load_image
    pre = Preprocessor(processor.tokenizer, processor.image_processor, system_prompt=R1_SYSTEM_PROMPT)
    rows, jaxr1_ids = [], []
    with open(data_path) as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            ex = pre.process(RawRow(row, data_path, i, os.path.dirname(data_path)))
            # Arrow wants one content type per column: text turns as [{"type": "text", ...}] like the user turn.
            prompt = [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str)
                      else m for m in ex.messages]
            rows.append(dict(prompt=prompt, image=load_image(row["image"], os.path.dirname(data_path)),
                             answer=ex.reward["answer"]))
            jaxr1_ids.append(ex.input_ids)
    dataset = Dataset.from_list(rows)
    r = dataset[0]
    trl_ids = processor.apply_chat_template([prepare_multimodal_messages(r["prompt"], [r["image"]])],
                                            add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0]
    if list(trl_ids) != list(jaxr1_ids[0]):
        raise SystemExit(f"prompt ids differ: TRL {len(trl_ids)} tokens, jaxr1 {len(jaxr1_ids[0])}")
    return dataset


def run_trl(model_dir: str, data_path: str, run_dir: str, args, out_path: str) -> None:
    """Runs in a spawned child: no JAX (or its thread pool) in the process that times PyTorch."""
    import torch
    import transformers
    import trl
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from jaxr1.rewards.functions import accuracy_reward
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    processor = make_processor(model_dir)
    dataset = trl_dataset(data_path, processor)

    def accuracy(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in accuracy_reward(texts, [{"answer": a} for a in answer])]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.logs, self.sample = [], [], []

        def on_train_begin(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

        def timed(self, fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                out = fn(*a, **k)
                self.sample.append(time.perf_counter() - t0)
                return out
            return wrapper

    rows_per_step = args.batch * args.generations
    # loss_type "dapo" = jaxr1's token_mean (one process, no accumulation: normalised by the batch's tokens).
    config = GRPOConfig(
        output_dir=run_dir, num_generations=args.generations, max_completion_length=args.max_completion_length,
        per_device_train_batch_size=rows_per_step, gradient_accumulation_steps=1, steps_per_generation=1,
        num_iterations=1, beta=args.beta, temperature=1.0, top_p=1.0, top_k=0, loss_type="dapo",
        scale_rewards="group", epsilon=0.2, learning_rate=args.lr, lr_scheduler_type="constant",
        max_steps=args.steps + 1, seed=args.seed, use_vllm=False, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True, log_completions=False)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=[accuracy], args=config, train_dataset=dataset,
                          processing_class=processor, callbacks=[timer])
    trainer._generate = timer.timed(trainer._generate)   # prompt processing + model.generate
    trainer.train()
    steps = np.diff(timer.ends).tolist()
    steady = timer.logs[1:]
    with open(out_path, "w") as f:
        json.dump(dict(first=steps[0], steps=steps[1:], sample=float(np.mean(timer.sample[1:])),
                       length=float(np.mean([g["completions/mean_length"] for g in steady])),
                       versions=f"trl {trl.__version__}, transformers {transformers.__version__}, "
                                f"torch {torch.__version__}, {torch.get_num_threads()} threads"), f)


def spawn_trl(model_dir: str, data_path: str, run_dir: str, args) -> dict:
    out_path = run_dir + ".json"
    proc = multiprocessing.get_context("spawn").Process(target=run_trl,
                                                        args=(model_dir, data_path, run_dir, args, out_path))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"TRL benchmark process failed (exit code {proc.exitcode})")
    with open(out_path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--batch", type=int, default=4, help="prompts per optimizer step (B)")
    ap.add_argument("--generations", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--max-completion-length", type=int, default=64, help="new tokens per sample at most (L)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL weight (R1-V's); > 0 runs the reference model")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-jaxr1", action="store_true")
    args = ap.parse_args()

    from jaxr1.data import write_synthetic_dataset
    tmp = tempfile.TemporaryDirectory()
    model_dir = make_model_dir(args.preset, os.path.join(tmp.name, "model"), args.seed)
    data_path = write_synthetic_dataset(os.path.join(tmp.name, "data"), args.batch * (args.steps + 1) * 2,
                                        seed=args.seed)
    cores = len(os.sched_getaffinity(0))
    print(f"model ({args.preset}): {describe(model_dir)}; float32; {cores} cpus, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"step: {args.batch} prompts (one 224px image) x {args.generations} samples x <= "
          f"{args.max_completion_length} new tokens, temperature 1, accuracy reward, beta {args.beta}; "
          f"{args.steps} timed steps after 1 warm-up step", flush=True)

    def summary(name, r):
        s = float(np.mean(r["steps"]))
        tokens = r["length"] * args.batch * args.generations
        print(f"{name}: {s:.2f} s/step (steps {', '.join(f'{x:.2f}' for x in r['steps'])}); completion length "
              f"{r['length']:.1f} -> {tokens:.0f} tokens/step, {tokens / s:.1f} tokens/s; warm-up step "
              f"{r['first']:.2f} s", flush=True)
        return s

    j = t = None
    if not args.skip_jaxr1:
        j = run_jaxr1(model_dir, data_path, os.path.join(tmp.name, "jaxr1"), args)
        js = summary("jaxr1", j)
        print(f"  sample {j['sample']:.2f} s + the rest (reward, old/ref log-probs, update) "
              f"{js - j['sample']:.2f} s; compile ~ {j['first'] - js:.2f} s (warm-up step - steady step)",
              flush=True)
    if not args.skip_trl:
        t = spawn_trl(model_dir, data_path, os.path.join(tmp.name, "trl"), args)
        print(f"TRL ({t['versions']}, own process)")
        ts = summary("TRL GRPOTrainer", t)
        print(f"  sample {t['sample']:.2f} s + the rest (reward, ref log-probs, update) {ts - t['sample']:.2f} s",
              flush=True)
    if j and t:
        print(f"jaxr1 speedup (TRL s/step / jaxr1 s/step): {ts / js:.2f}x (target >= 3x); load average "
              f"{os.getloadavg()[0]:.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
