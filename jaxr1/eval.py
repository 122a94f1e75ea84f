"""python -m jaxr1.eval --model DIR --data FILE [key=value ...]

Greedy (or sampled pass@k) evaluation with the training data code and verifier: accuracy overall and per
task/source, answers written to JSONL. `evaluate` is also what the trainer runs on its held-out split.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

from jaxr1.rewards import RewardScorer


def decode_completions(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return tokenizer.batch_decode([t[:n] for t, n in zip(np.asarray(tokens), np.asarray(lengths))],
                                  skip_special_tokens=True)


def evaluate(model, batches, tokenizer, *, eos_token_ids, max_new_tokens: int = 64, num_samples: int = 1,
             temperature: float = 0.0, seed: int = 0, scorer: RewardScorer | None = None,
             out_path: str | None = None) -> dict:
    """pass@k accuracy (k = num_samples) over `batches` (PromptBatches); rows written to out_path."""
    from jaxr1.parallel.distributed import to_host
    from jaxr1.sampling import generate
    own = scorer is None
    scorer = scorer or RewardScorer([("accuracy", 1.0, {})], num_workers=2, timeout_s=5.0)
    correct, by_group = [], collections.defaultdict(list)
    out = open(out_path, "w") if out_path else None
    try:
        for i, batch in enumerate(batches):
            gen = generate(model, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw,
                           max_new_tokens=max_new_tokens, temperature=temperature, num_samples=num_samples,
                           eos_token_ids=eos_token_ids, seed=seed + i)
            texts = decode_completions(tokenizer, to_host(gen.tokens), to_host(gen.lengths))
            examples = [ex for ex in batch.examples for _ in range(num_samples)]
            acc = scorer.score(texts, examples).per_function["accuracy"].reshape(-1, num_samples)
            for row, ex in enumerate(batch.examples):
                if not batch.valid[row]:
                    continue
                ok = bool(acc[row].max() > 0)
                correct.append(ok)
                by_group[f"task/{ex.get('task') or 'none'}"].append(ok)
                by_group[f"source/{os.path.basename(str(ex.get('source')))}"].append(ok)
                if out:
                    out.write(json.dumps({"row": ex.get("row"), "source": ex.get("source"), "answer": ex["answer"],
                                          "completions": texts[row * num_samples:(row + 1) * num_samples],
                                          "correct": ok}) + "\n")
    finally:
        if out:
            out.close()
        if own:
            scorer.close()
    metrics = {"accuracy": float(np.mean(correct)) if correct else 0.0, "num_rows": len(correct)}
    metrics.update({f"accuracy/{k}": float(np.mean(v)) for k, v in sorted(by_group.items())})
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxr1.eval", description=__doc__.splitlines()[2])
    ap.add_argument("--model", required=True, help="HF directory or jaxr1 checkpoint")
    ap.add_argument("--data", required=True, help="data file/dir (or synthetic:counting:N:SEED)")
    ap.add_argument("--out", default=None, help="answers JSONL (default: next to nothing, printed only)")
    ap.add_argument("overrides", nargs="*", help="eval.* / data.* keys, e.g. eval.num_samples=8")
    args = ap.parse_args(argv)
    from jaxr1.config import load_config
    from jaxr1.train import build_eval_batches, load_policy
    cfg = load_config(None, [f"data.path={args.data}", f"model.path={args.model}", *args.overrides])
    model, tokenizer, image_processor, model_dir = load_policy(cfg.model, cfg.data)
    batches = build_eval_batches(cfg, tokenizer, image_processor, data_cfg=cfg.data)
    metrics = evaluate(model, batches, tokenizer, eos_token_ids=eos_ids(tokenizer),
                       max_new_tokens=cfg.eval.max_new_tokens, num_samples=cfg.eval.num_samples,
                       temperature=cfg.eval.temperature, out_path=args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def eos_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
           tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    return tuple(sorted(i for i in ids if isinstance(i, int) and i >= 0))


if __name__ == "__main__":
    sys.exit(main())
