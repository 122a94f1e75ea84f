"""Warm-start the embedded tiny checkpoint with a short SFT on synthetic counting scenes, reproducibly.

    python scripts/make_tiny_sft.py [--steps N] [--schedule-steps M] [--out DIR] [--eval-every K]

Writes jaxr1/assets/tiny_qwen2_5_vl_sft (HF format): the model then answers in the R1 format and counts only
partly right, which is where the embedded default's GRPO run (jaxr1/assets/default.yaml) starts. Prints
held-out greedy accuracy on the same held-out scenes the default run evaluates on.

The target lists the scene's objects before the count, "<think>red circle, blue square</think><answer>2</answer>"
(jaxr1.data.synthetic.describe_objects): with a fixed reasoning text ("I count the objects") the tiny model learns
the format but never the count (chance after 600 steps); naming the objects gives the vision tower a dense
signal, and the count is then the length of the list. Training stops part-way through its cosine schedule
(--steps of --schedule-steps), while held-out accuracy is still climbing, so that RL has something to do.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

TEMPLATE = "<think>{objects}</think><answer>{count}</answer>"


def scene_targets(tokenizer, max_objects: int):
    """run_sft's `targets`: TEMPLATE filled from each row's scene, then eos."""
    from jaxr1.data.synthetic import describe_objects, scene_objects
    from jaxr1.sft import encode_targets

    def targets(examples: list[dict], length: int, eos_id: int):
        scenes = [scene_objects(ex["source"], ex["row"], max_objects) for ex in examples]
        texts = [TEMPLATE.format(objects=describe_objects(objs), count=len(objs)) for objs in scenes]
        return encode_targets(tokenizer, texts, length, eos_id)
    return targets


def main() -> None:
    from jaxr1.assets import DEFAULT_CONFIG, TINY_SFT_MODEL_DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=275)
    ap.add_argument("--schedule-steps", type=int, default=400, help="length of the warmup-cosine lr schedule")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-target-length", type=int, default=40)
    ap.add_argument("--seed", type=int, default=12345, help="data seed: scenes apart from RL's and the eval's")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--out", default=TINY_SFT_MODEL_DIR)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    from jaxr1.config import load_config
    from jaxr1.eval import evaluate
    from jaxr1.data.text import eos_ids
    from jaxr1.loading import build_eval_batches, load_policy
    from jaxr1.models.qwen2_5_vl import save_hf
    from jaxr1.sft import run_sft
    # The embedded default's data settings (prompt, scenes, held-out split), so SFT sees the prompts RL will.
    cfg = load_config(DEFAULT_CONFIG, ["model.path=tiny-random"])
    model, tokenizer, image_processor, model_dir = load_policy(cfg.model, cfg.data)
    eval_batches = build_eval_batches(cfg, tokenizer, image_processor)

    def accuracy(m) -> float:
        return evaluate(m, eval_batches, tokenizer, eos_token_ids=eos_ids(tokenizer),
                        max_new_tokens=cfg.eval.max_new_tokens)["accuracy"]

    def callback(step, trainer):
        if args.eval_every and step % args.eval_every == 0:
            print(f"step {step}: held-out accuracy {accuracy(trainer.model()):.3f}", flush=True)

    data_cfg = dataclasses.replace(cfg.data, batch_size=args.batch_size, seed=args.seed)
    model, _ = run_sft(model, tokenizer, image_processor, data_cfg, steps=args.steps, lr=args.lr,
                       max_target_length=args.max_target_length, log_every=25, callback=callback,
                       targets=scene_targets(tokenizer, cfg.data.max_objects), schedule_steps=args.schedule_steps)
    print(f"final held-out accuracy {accuracy(model):.3f} on {cfg.data.num_eval} rows")
    save_hf(model, args.out, source_dir=model_dir)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
