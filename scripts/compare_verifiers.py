"""Run the labelled verifier cases through jaxr1's verify and through math-verify, side by side.

    python scripts/compare_verifiers.py [--cases tests/rewards/data/verifier_cases.jsonl] [--show-errors]

Both verifiers run in the same spawn worker pool with a per-case wall-clock timeout (math-verify's
own SIGALRM timeouts are disabled: they only work in a main thread). A timeout counts as a wrong
answer. math-verify gets the same strings (bare answers wrapped in $...$, see math_verify_input);
it has no notion of answer options, so `choices` are passed to jaxr1 only. A case labelled for
a numeric policy ("numeric_match", "min_sig_digits") runs jaxr1 with that policy; math-verify
has one fixed policy (floats rounded to 6 places), so --default-policy drops those cases.
Exits 1 if jaxr1 is less accurate than math-verify on any category.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxr1.rewards.pool import WorkerPool  # noqa: E402
from jaxr1.rewards.verify import verify  # noqa: E402

DEFAULT_CASES = Path(__file__).resolve().parents[1] / "tests" / "rewards" / "data" / "verifier_cases.jsonl"


POLICY_KEYS = ("numeric_match", "min_sig_digits")


def jaxr1_verify(prediction: str, gold: str, choices: list[str] | None, policy: dict) -> bool:
    return verify(prediction, gold, choices=choices, **policy)


_DELIMITERS = ("$", "\\boxed", "\\(", "\\[", "<answer>")


def math_verify_input(s: str) -> str:
    """math-verify's LaTeX extractor needs math delimiters ($...$ or \\boxed): bare answers
    without prose (no 3+ letter word outside LaTeX commands) get wrapped in $...$, as a caller
    of math-verify would do; prose and tagged text go in as they are."""
    if any(d in s for d in _DELIMITERS):
        return s
    if re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}", s):
        return s
    return f"${s}$"


def math_verify_verify(prediction: str, gold: str, choices: list[str] | None, policy: dict) -> bool:
    logging.disable(logging.WARNING)  # "timeout disabled" warnings: our pool is the timeout
    from math_verify import parse, verify as mv_verify

    gold_parsed = parse(math_verify_input(gold), parsing_timeout=None)
    pred_parsed = parse(math_verify_input(prediction), parsing_timeout=None)
    return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=None))


def run(pool: WorkerPool, fn, cases: list[dict], timeout_s: float) -> tuple[list[bool], int, float]:
    start = time.perf_counter()
    policy = [{k: c[k] for k in POLICY_KEYS if k in c} for c in cases]
    args = [(c["prediction"], c["gold"], c.get("choices"), p) for c, p in zip(cases, policy)]
    results = pool.run(fn, args, timeout_s)
    answers = [r.status == "ok" and bool(r.value) for r in results]
    timeouts = sum(r.status == "timeout" for r in results)
    return answers, timeouts, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--show-errors", action="store_true", help="list every case either verifier gets wrong")
    ap.add_argument("--default-policy", action="store_true", help="only cases labelled for the default policy")
    args = ap.parse_args()

    cases = [json.loads(line) for line in args.cases.read_text().splitlines() if line.strip()]
    if args.default_policy:
        cases = [c for c in cases if not any(k in c for k in POLICY_KEYS)]
    with WorkerPool(args.workers) as pool:
        ours, our_timeouts, our_s = run(pool, jaxr1_verify, cases, args.timeout)
        theirs, their_timeouts, their_s = run(pool, math_verify_verify, cases, args.timeout)

    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        by_cat[c["category"]].append(i)

    def acc(answers: list[bool], idx: list[int]) -> float:
        return 100.0 * sum(answers[i] == cases[i]["expected"] for i in idx) / len(idx)

    def wrong(answers: list[bool], idx: list[int], expected: bool) -> int:
        return sum(answers[i] != expected and cases[i]["expected"] == expected for i in idx)

    header = f"{'category':<20} {'n':>4} {'jaxr1':>7} {'math-verify':>12}   {'jaxr1 FP/FN':>11} {'m-v FP/FN':>10}"
    print(header)
    print("-" * len(header))
    worse = []
    rows = sorted(by_cat.items()) + [("ALL", list(range(len(cases))))]
    for cat, idx in rows:
        if cat == "ALL":
            print("-" * len(header))
        a, b = acc(ours, idx), acc(theirs, idx)
        if a < b:
            worse.append(cat)
        fp_fn_a = f"{wrong(ours, idx, False)}/{wrong(ours, idx, True)}"
        fp_fn_b = f"{wrong(theirs, idx, False)}/{wrong(theirs, idx, True)}"
        print(f"{cat:<20} {len(idx):>4} {a:>6.1f}% {b:>11.1f}%   {fp_fn_a:>11} {fp_fn_b:>10}")
    print(f"\nFP = false positive (said equal, labelled different); FN = miss.")
    print(f"timeouts: jaxr1 {our_timeouts}, math-verify {their_timeouts} (limit {args.timeout:g}s per case)")
    print(f"wall time: jaxr1 {our_s:.1f}s, math-verify {their_s:.1f}s ({args.workers} workers)")

    if args.show_errors:
        print("\ncases either verifier gets wrong (expected, jaxr1, math-verify):")
        for i, c in enumerate(cases):
            if ours[i] != c["expected"] or theirs[i] != c["expected"]:
                print(f"  {c['id']:<26} {c['expected']!s:<5} {ours[i]!s:<5} {theirs[i]!s:<5} "
                      f"pred={c['prediction']!r} gold={c['gold']!r}")
    if worse:
        print(f"\njaxr1 is less accurate than math-verify on: {', '.join(worse)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
