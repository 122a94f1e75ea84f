"""python -m jaxr1.eval --model DIR [--data FILE] [--out ANSWERS.jsonl] [key=value ...]

Greedy (or sampled pass@k) evaluation with the training data code and verifier: accuracy overall and per
task/source, answers written to JSONL. `evaluate` is also what the trainer runs on its held-out split.
Given a run directory (or a checkpoint inside one), the run's config.yaml supplies the system prompt,
question template, data settings, verifier policy and eval settings, and its held-out set is the default
data; command-line keys override them.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

from jaxr1 import compile_cache
from jaxr1 import run_dir
from jaxr1.config import load_config
from jaxr1.data.text import decode_completions, eos_ids
from jaxr1.errors import UserError
from jaxr1.errors import run_cli
from jaxr1.loading import build_eval_batches, load_policy, resolve_model_dir
from jaxr1.parallel.distributed import to_host
from jaxr1.rewards import RewardScorer, reward_specs
from jaxr1.sampling import generate


def evaluate(model, batches, tokenizer, *, eos_token_ids, max_new_tokens: int = 64, num_samples: int = 1,
             temperature: float = 0.0, seed: int = 0, scorer: RewardScorer | None = None,
             out_path: str | None = None) -> dict:
    """pass@k accuracy (k = num_samples) over `batches` (PromptBatches); rows written to out_path."""
    own = scorer is None
    scorer = scorer or RewardScorer([("accuracy", 1.0, {})], num_workers=2, timeout_s=5.0)
    correct, by_group = [], collections.defaultdict(list)
    out = open(out_path, "w") if out_path else None
    try:
        for i, batch in enumerate(batches):
            gen = generate(model, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw,
                           max_new_tokens=max_new_tokens, temperature=temperature, num_generations=num_samples,
                           eos_token_ids=eos_token_ids, seed=seed + i)
            texts = decode_completions(tokenizer, to_host(gen.tokens), to_host(gen.lengths))
            examples = [ex for ex in batch.reward_inputs for _ in range(num_samples)]
            acc = scorer.score(texts, examples).per_function["accuracy"].reshape(-1, num_samples)
            for row, ex in enumerate(batch.reward_inputs):
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
    ap = argparse.ArgumentParser(prog="python -m jaxr1.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="a run directory (its newest checkpoint), a checkpoint inside one, an HF directory, a "
                         "jaxr1 checkpoint or a hub name")
    ap.add_argument("--data", default=None,
                    help="data file/dir/hub name or synthetic:counting:N:SEED (default: the run's held-out set)")
    ap.add_argument("--out", default=None, help="answers JSONL (default: not written, metrics printed only)")
    ap.add_argument("overrides", nargs="*", help="config keys, e.g. eval.num_samples=8 data.system_prompt=none")
    args = ap.parse_args(argv)
    return run_cli(lambda: _eval(args), "jaxr1.eval")


def _eval(args) -> int:
    # A model from a run is evaluated with that run's prompt, template, data and verifier settings.
    run = run_dir.run_dir_of(resolve_model_dir(args.model))
    base = os.path.join(run, run_dir.CONFIG) if run else None
    overrides = [f"model.path={args.model}", *([f"data.path={args.data}", "data.eval_path=null"] if args.data else [])]
    cfg = load_config(base, [*overrides, *args.overrides])
    compile_cache.enable(cfg.compilation_cache)
    data_cfg = cfg.data if args.data else cfg.data.for_eval()
    if data_cfg is None:
        raise UserError(f"no held-out data: {'the run ' + run + ' has no eval split' if run else 'no run config'}"
                        f"; pass --data FILE")
    print(f"evaluating {args.model} on {', '.join(data_cfg.paths)}"
          f"{' with the settings of the run in ' + run if run else ''}", file=sys.stderr)
    model, tokenizer, image_processor, _ = load_policy(cfg.model, cfg.data)
    if cfg.model.compute_dtype != cfg.model.param_dtype:   # as the trainer's own evaluations run
        import jax
        from flax import nnx
        graphdef, params = nnx.split(model)
        model = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(cfg.model.compute_dtype), params))
    batches = build_eval_batches(cfg, tokenizer, image_processor, data_cfg=data_cfg)
    with RewardScorer(reward_specs(cfg.rewards, only=("accuracy",)), num_workers=cfg.rewards.num_workers,
                      timeout_s=cfg.rewards.timeout_s) as scorer:
        metrics = evaluate(model, batches, tokenizer, eos_token_ids=eos_ids(tokenizer),
                           max_new_tokens=cfg.eval.max_new_tokens, num_samples=cfg.eval.num_samples,
                           temperature=cfg.eval.temperature, scorer=scorer, out_path=args.out)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
