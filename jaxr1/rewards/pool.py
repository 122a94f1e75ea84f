"""A persistent pool of worker processes that runs tasks with per-task wall-clock timeouts.

Why not concurrent.futures: a ProcessPoolExecutor cannot stop one hung task. Here each
worker owns a pipe; a task past its deadline gets its worker killed (SIGTERM, then SIGKILL)
and a fresh worker started in the background, while the other workers keep going.
Workers are started with the "spawn" context: forking a process that runs JAX threads can
deadlock the child. As with any spawn pool, the program's main module must guard its entry
point with `if __name__ == "__main__":` (spawn re-imports it in each worker).
"""

from __future__ import annotations

import atexit
import collections
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

STARTUP_TIMEOUT_S = 120.0


@dataclass
class TaskResult:
    status: str  # "ok", "timeout", "error"
    value: Any = None
    error: str | None = None


def _worker_main(conn) -> None:
    # Ctrl-C belongs to the parent; it closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import jaxr1.rewards  # noqa: F401 - pay the sympy import before announcing readiness

    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, fn, args = msg
        try:
            out = (task_id, "ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - report, never die on a bad task
            out = (task_id, "error", f"{type(e).__name__}: {str(e)[:300]}")
        try:
            conn.send(out)
        except Exception as e:  # unpicklable result
            conn.send((task_id, "error", f"result not sendable: {type(e).__name__}"))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(0.2)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(1.0)


class WorkerPool:
    """run(fn, args_list, timeout_s) -> one TaskResult per args tuple, in order."""

    def __init__(self, num_workers: int = 2, *, context: str = "spawn"):
        if context not in ("spawn", "forkserver"):
            raise ValueError("use 'spawn' or 'forkserver': fork is unsafe once JAX threads run")
        self.num_workers = max(1, int(num_workers))
        self._ctx = mp.get_context(context)
        self._lock = threading.Lock()
        self._workers = [_Worker(self._ctx) for _ in range(self.num_workers)]
        self._closed = False
        self._start_failures = 0
        self.restarts = 0

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self._ctx)
        self.restarts += 1

    def run(self, fn: Callable, args_list: list[tuple], timeout_s: float) -> list[TaskResult]:
        """fn must be importable by name (a module-level function): it is pickled by reference."""
        with self._lock:
            if self._closed:
                raise RuntimeError("pool is closed")
            return self._run(fn, args_list, timeout_s)

    def _run(self, fn: Callable, args_list: list[tuple], timeout_s: float) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(args_list)
        pending = collections.deque(range(len(args_list)))
        while pending or any(w.task is not None for w in self._workers):
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.task is not None and now > w.deadline:
                    results[w.task] = TaskResult("timeout", error=f"exceeded {timeout_s:.3g}s")
                    self._replace(i)
            if pending and not any(w.ready for w in self._workers):
                stuck = all(now - w.started > STARTUP_TIMEOUT_S for w in self._workers)
                if stuck or self._start_failures > 3:
                    break  # workers cannot start at all; fail the remaining tasks below
            for w in self._workers:
                if w.ready and w.task is None and pending:
                    idx = pending.popleft()
                    try:
                        w.conn.send((idx, fn, args_list[idx]))
                    except Exception as e:  # noqa: BLE001 - e.g. unpicklable arguments
                        results[idx] = TaskResult("error", error=f"send failed: {type(e).__name__}: {e}")
                        continue
                    w.task, w.deadline = idx, time.monotonic() + timeout_s
            deadlines = [w.deadline for w in self._workers if w.task is not None]
            wake = min(deadlines) - time.monotonic() if deadlines else 0.5
            conns = {w.conn: i for i, w in enumerate(self._workers) if w.task is not None or not w.ready}
            if not conns:
                continue
            for conn in wait(list(conns), timeout=max(0.0, wake)):
                i = conns[conn]
                w = self._workers[i]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. out of memory)
                    if w.task is not None:
                        results[w.task] = TaskResult("error", error="worker died")
                    self._start_failures += 0 if w.ready else 1
                    self._replace(i)
                    continue
                if msg[0] == "ready":
                    w.ready = True
                    self._start_failures = 0
                    continue
                task_id, status, payload = msg
                if task_id == w.task:
                    results[task_id] = (
                        TaskResult("ok", value=payload) if status == "ok" else TaskResult("error", error=payload)
                    )
                    w.task = None
        return [r if r is not None else TaskResult("error", error="workers failed to start") for r in results]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for w in self._workers:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
            for w in self._workers:
                w.proc.join(0.5)
                w.kill()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: WorkerPool | None = None
_shared_lock = threading.Lock()


def run_with_timeout(fn: Callable, args: tuple, timeout_s: float) -> TaskResult:
    """Run one call in a shared single-worker pool (created on first use) with a deadline."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = WorkerPool(1)
            atexit.register(_shared.close)
        pool = _shared
    return pool.run(fn, [args], timeout_s)[0]
