"""RewardScorer: score a batch of completions off the trainer's thread.

submit() returns a Future at once, so the device can start the next step while rewards
are computed. Verification and plugins run one item per task in a persistent worker pool
with a per-item timeout; a timed-out or failed item scores 0 and is counted in stats.
Cheap regex/arithmetic functions run in the scorer's own thread.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from jaxr1.rewards.pool import WorkerPool
from jaxr1.rewards.registry import INLINE_FUNCTIONS, get_reward_function, parse_reward_specs


STAT_KEYS = ("timeouts", "parse_failures", "no_answer", "errors")


@dataclass
class RewardResult:
    per_function: dict[str, np.ndarray]  # unweighted, one value per completion
    total: np.ndarray  # weighted sum
    stats: dict[str, int] = field(default_factory=dict)  # timeouts, parse_failures, ... (+ "name/key")
    seconds: float = 0.0


def call_reward_fn(fn, completions: list, examples: list, kwargs: dict, ctx: dict) -> np.ndarray:
    """Call fn with config kwargs and ctx, dropping ctx keys a plugin does not accept."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        ctx = {k: v for k, v in ctx.items() if k in params}
    out = np.asarray(fn(completions, examples, **kwargs, **ctx), dtype=np.float32).reshape(-1)
    if out.shape[0] != len(completions):
        raise ValueError(f"reward function returned {out.shape[0]} values for {len(completions)} completions")
    return out


def _score_item(name: str, kwargs: dict, completion: str, example: dict, ctx: dict) -> tuple[float, dict]:
    """Worker-side task: one function on one completion."""
    stats: Counter = Counter()
    fn = get_reward_function(name)
    value = call_reward_fn(fn, [completion], [example], kwargs, {**ctx, "stats": stats})[0]
    return float(value), dict(stats)


def _slice_ctx(ctx: dict, i: int, n: int) -> dict:
    """Per-item ctx: arrays with one entry per completion are cut to that entry."""
    out = {}
    for k, v in ctx.items():
        if isinstance(v, (np.ndarray, list, tuple)) and len(v) == n:
            out[k] = np.asarray(v)[i : i + 1] if isinstance(v, np.ndarray) else list(v[i : i + 1])
        else:
            out[k] = v
    return out


class RewardScorer:
    """scorer = RewardScorer([("format", 0.5, {}), ("accuracy", 1.0, {})], num_workers=2, timeout_s=5)."""

    def __init__(self, specs: Any, num_workers: int = 2, timeout_s: float = 5.0, *, context: str = "spawn"):
        self.specs = parse_reward_specs(specs)
        self.timeout_s = float(timeout_s)
        self._inline = {n: get_reward_function(n) for n, _, _ in self.specs if n in INLINE_FUNCTIONS}
        needs_pool = any(n not in INLINE_FUNCTIONS for n, _, _ in self.specs)
        self.pool = WorkerPool(num_workers, context=context) if needs_pool else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxr1-rewards")

    def submit(self, completions: Sequence[str], examples: Sequence[dict], **ctx: Any) -> "Future[RewardResult]":
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        return self._thread.submit(self.score, list(completions), list(examples), **ctx)

    def score(self, completions: list[str], examples: list[dict], **ctx: Any) -> RewardResult:
        start = time.perf_counter()
        n = len(completions)
        stats: Counter = Counter({k: 0 for k in STAT_KEYS})
        per_fn: dict[str, np.ndarray] = {}
        pooled = [(name, kw) for name, _, kw in self.specs if name not in self._inline]
        if pooled and n:
            per_fn.update(self._score_pooled(pooled, completions, examples, ctx, stats))
        for name, _, kw in self.specs:
            if name in self._inline:
                fn_stats: Counter = Counter()
                per_fn[name] = _call_inline(self._inline[name], completions, examples, kw, ctx, fn_stats)
                _merge(stats, name, fn_stats)
            elif not n:
                per_fn[name] = np.zeros(0, dtype=np.float32)
        total = np.zeros(n, dtype=np.float32)
        for name, weight, _ in self.specs:
            total += np.float32(weight) * per_fn[name]
        return RewardResult(per_fn, total, dict(stats), time.perf_counter() - start)

    def _score_pooled(self, pooled, completions, examples, ctx, stats) -> dict[str, np.ndarray]:
        n = len(completions)
        tasks = [
            (name, kw, completions[i], examples[i], _slice_ctx(ctx, i, n)) for name, kw in pooled for i in range(n)
        ]
        results = self.pool.run(_score_item, tasks, self.timeout_s)
        out = {}
        for k, (name, _) in enumerate(pooled):
            values = np.zeros(n, dtype=np.float32)
            fn_stats: Counter = Counter()
            errors = []
            for i in range(n):
                r = results[k * n + i]
                if r.status == "ok":
                    values[i] = r.value[0]
                    fn_stats.update(r.value[1])
                elif r.status == "timeout":
                    fn_stats["timeouts"] += 1
                else:
                    fn_stats["errors"] += 1
                    errors.append(r.error)
            if len(errors) == n:
                # Every item failing is a broken function or config, not bad model output:
                # say so rather than train on silent zeros.
                raise RuntimeError(f"reward function {name!r} failed on every completion: {errors[0]}")
            out[name] = values
            _merge(stats, name, fn_stats)
        return out

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _call_inline(fn, completions: list, examples: list, kwargs: dict, ctx: dict, stats: Counter) -> np.ndarray:
    """A batch call; if it raises, item by item so one bad example scores 0 (counted) alone."""
    try:
        return call_reward_fn(fn, completions, examples, kwargs, {**ctx, "stats": stats})
    except Exception:
        if len(completions) <= 1:
            raise
    n = len(completions)
    values = np.zeros(n, dtype=np.float32)
    failures = []
    for i in range(n):
        item_ctx = {**_slice_ctx(ctx, i, n), "stats": stats}
        try:
            values[i] = call_reward_fn(fn, completions[i : i + 1], examples[i : i + 1], kwargs, item_ctx)[0]
        except Exception as e:  # noqa: BLE001 - counted; all failing re-raises below
            failures.append(e)
    if len(failures) == n:
        raise failures[0]
    stats["errors"] += len(failures)
    return values


def _merge(total: Counter, name: str, fn_stats: Counter) -> None:
    for key, value in fn_stats.items():
        total[key] += value
        total[f"{name}/{key}"] += value
