"""Warm-start the embedded tiny checkpoint with a short SFT on synthetic counting scenes, reproducibly.

    python scripts/make_tiny_sft.py [--steps N] [--out DIR] [--eval-every K]

Writes jaxr1/assets/tiny_qwen2_5_vl_sft (HF format): the model then answers in the R1 format and counts only
partly right, which is where the embedded default's GRPO run starts. Prints held-out greedy accuracy.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging


def main() -> None:
    from jaxr1.assets import TINY_SFT_MODEL_DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--eval-rows", type=int, default=256)
    ap.add_argument("--out", default=TINY_SFT_MODEL_DIR)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    from jaxr1.config import load_config
    from jaxr1.eval import eos_ids, evaluate
    from jaxr1.models.qwen2_5_vl import save_hf
    from jaxr1.sft import run_sft
    from jaxr1.train import build_eval_batches, load_policy
    cfg = load_config(None, ["model.path=tiny-random", f"data.num_eval={args.eval_rows}"])
    model, tokenizer, image_processor, model_dir = load_policy(cfg.model, cfg.data)
    eval_batches = build_eval_batches(cfg, tokenizer, image_processor)

    def accuracy(m) -> float:
        return evaluate(m, eval_batches, tokenizer, eos_token_ids=eos_ids(tokenizer),
                        max_new_tokens=cfg.eval.max_new_tokens)["accuracy"]

    def callback(step, trainer):
        if args.eval_every and step % args.eval_every == 0:
            print(f"step {step}: held-out accuracy {accuracy(trainer.model()):.3f}", flush=True)

    data_cfg = dataclasses.replace(cfg.data, batch_size=args.batch_size, seed=12345)
    model, _ = run_sft(model, tokenizer, image_processor, data_cfg, steps=args.steps, lr=args.lr,
                       template=cfg.sft.target_template, max_target_length=cfg.sft.max_target_length,
                       callback=callback)
    print(f"final held-out accuracy {accuracy(model):.3f}")
    save_hf(model, args.out, source_dir=model_dir)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
