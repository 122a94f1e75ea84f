"""Measure reward scoring throughput: completions verified per second through RewardScorer.

    python scripts/bench_rewards.py [--n 1000] [--workers 2] [--repeats 3] [--functions format,accuracy]

Completions are synthetic but shaped like R1 rollouts: ~1.5 KB of <think> reasoning, then an
<answer> drawn from the labelled verifier cases (so the answer mix covers every category:
fractions, intervals, multiple choice, text, ...). Worker start-up is excluded (one warm-up batch).
Also reports the single-process rate of verify() alone, for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from jaxr1.rewards import RewardScorer, check  # noqa: E402

CASES = Path(__file__).resolve().parents[1] / "tests" / "rewards" / "data" / "verifier_cases.jsonl"
_WORDS = ("so we have", "therefore", "the area is", "let x be", "substituting gives", "which means",
          "\\frac{a}{b}", "x^2 + 1", "by symmetry", "checking the case", "=", "+", "3", "12", "the image shows")


def make_batch(n: int, seed: int) -> tuple[list[str], list[dict]]:
    rng = random.Random(seed)
    cases = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    comps, exs = [], []
    for _ in range(n):
        c = rng.choice(cases)
        think = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(150, 300)))
        pred = c["prediction"]
        answer = pred if "<answer>" in pred.lower() else f"<answer>{pred}</answer>"
        comps.append(f"<think>{think}</think>\n{answer}")
        exs.append({"answer": c["gold"], "choices": c.get("choices")})
    return comps, exs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="completions per batch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--functions", default="format,accuracy")
    args = ap.parse_args()

    specs = [(name, 1.0, {}) for name in args.functions.split(",")]
    comps, exs = make_batch(args.n, seed=0)
    lengths = np.array([len(c) // 4 for c in comps])
    ctx = {"completion_lengths": lengths, "max_completion_length": int(lengths.max())}
    print(f"cpus visible: {os.cpu_count()}, workers: {args.workers}, batch: {args.n}, functions: {args.functions}")
    print(f"mean completion length: {np.mean([len(c) for c in comps]):.0f} chars")

    with RewardScorer(specs, num_workers=args.workers, timeout_s=args.timeout) as scorer:
        warm = {"completion_lengths": lengths[:50], "max_completion_length": ctx["max_completion_length"]}
        scorer.submit(comps[:50], exs[:50], **warm).result()
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            result = scorer.submit(comps, exs, **ctx).result()
            times.append(time.perf_counter() - start)
        best, mean = min(times), sum(times) / len(times)
        print(f"scorer: {args.n / mean:.0f} completions/s (mean of {args.repeats}; best {args.n / best:.0f}/s), "
              f"{mean:.2f}s per {args.n} completions")
        print(f"stats of the last batch: {result.stats}")

    start = time.perf_counter()
    for c, ex in zip(comps, exs):
        check(c, ex["answer"], ex["choices"])
    single = time.perf_counter() - start
    print(f"verify() alone, one process: {args.n / single:.0f} completions/s")


if __name__ == "__main__":
    main()
