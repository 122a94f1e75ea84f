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
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

STARTUP_TIMEOUT_S = 120.0
MAX_START_FAILURES = 3    # consecutive workers that die or hang before "ready": the pool has failed
MONITOR_PERIOD_S = 1.0
MAX_CHUNK = 16


@dataclass
class TaskResult:
    status: str  # "ok", "timeout", "error"
    value: Any = None
    error: str | None = None


def _worker_main(conn) -> None:
    # Ctrl-C belongs to the parent; it closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # The verifier's heavy import, paid before announcing readiness (not `import jaxr1.rewards`: the package
        # imports this module; spawn has imported it already to find this function).
        import sympy  # noqa: F401
    except BaseException as e:  # noqa: BLE001 - the parent reports the cause instead of "failed to start"
        conn.send(("failed", f"{type(e).__name__}: {str(e)[:300]}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, chunk = msg
        # One result message per item: the parent times each item from the previous reply.
        for task_id, args in chunk:
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
        self.queue: collections.deque[int] = collections.deque()  # sent, not yet answered
        self.deadline = 0.0  # for the item at the head of the queue

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


def _death_cause(w: _Worker) -> str:
    w.proc.join(1.0)   # its pipe closes a moment before the exit code is there
    code = w.proc.exitcode
    name = f" ({signal.Signals(-code).name})" if code is not None and code < 0 else ""
    return f"worker exited with code {code}{name}" + ("" if w.ready else " before it was ready")


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
        self._start_error = "no worker has started yet"
        self.restarts = 0
        # Readiness is tracked from creation on, not from the first run(): a first scoring call minutes after
        # start-up (compilation, a long rollout) finds its workers ready, and dead ones restarted.
        self._monitor = threading.Thread(target=self._watch, name="jaxr1-pool-monitor", daemon=True)
        self._monitor.start()

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self._ctx)
        self.restarts += 1

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(MONITOR_PERIOD_S)
            if self._lock.acquire(blocking=False):   # run() does the same checks while it holds the lock
                try:
                    if not self._closed:
                        self._check_workers()
                finally:
                    self._lock.release()

    def _check_workers(self) -> None:
        """Read pending "ready"/"failed" messages; replace workers that died, or hang before they are ready."""
        for i, w in enumerate(self._workers):
            if w.queue:
                continue   # busy: run() times it out or sees it die
            cause = None
            try:
                while cause is None and not w.ready and w.conn.poll(0):
                    msg = w.conn.recv()
                    if msg[0] == "ready":
                        w.ready, self._start_failures = True, 0
                    elif msg[0] == "failed":
                        cause = f"worker failed while starting: {msg[1]}"
            except (EOFError, OSError):
                pass
            if cause is None and not w.proc.is_alive():
                cause = _death_cause(w)
            if cause is None and not w.ready and time.monotonic() - w.started > STARTUP_TIMEOUT_S:
                cause = f"worker sent no ready signal within {STARTUP_TIMEOUT_S:.0f}s"
            if cause is not None:
                if not w.ready:
                    self._start_failures += 1
                    self._start_error = cause
                self._replace(i)

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Block until a worker is ready; RuntimeError with the cause if the workers cannot start."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._check_workers()
                if any(w.ready for w in self._workers):
                    return
                if self._start_failures >= MAX_START_FAILURES or time.monotonic() > deadline:
                    raise RuntimeError(f"reward workers failed to start: {self._start_error}")
            time.sleep(0.05)

    def run(self, fn: Callable, args_list: list[tuple], timeout_s: float) -> list[TaskResult]:
        """fn must be importable by name (a module-level function): it is pickled by reference."""
        with self._lock:
            if self._closed:
                raise RuntimeError("pool is closed")
            return self._run(fn, args_list, timeout_s)

    def _run(self, fn: Callable, args_list: list[tuple], timeout_s: float) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(args_list)
        pending = collections.deque(range(len(args_list)))
        while pending or any(w.queue for w in self._workers):
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.queue and now > w.deadline:
                    results[w.queue.popleft()] = TaskResult("timeout", error=f"exceeded {timeout_s:.3g}s")
                    pending.extendleft(reversed(w.queue))  # the rest of its chunk goes to others
                    self._replace(i)
            self._check_workers()
            if pending and not any(w.ready for w in self._workers) and self._start_failures >= MAX_START_FAILURES:
                break  # workers cannot start at all; fail the remaining tasks below
            for w in self._workers:
                if w.ready and not w.queue and pending:
                    self._send_chunk(w, fn, args_list, pending, results, timeout_s)
            deadlines = [w.deadline for w in self._workers if w.queue]
            wake = min(deadlines) - time.monotonic() if deadlines else 0.5
            conns = {w.conn: i for i, w in enumerate(self._workers) if w.queue or not w.ready}
            if not conns:
                continue
            for conn in wait(list(conns), timeout=max(0.0, wake)):
                self._receive(conns[conn], results, pending, timeout_s)
        failed = TaskResult("error", error=f"workers failed to start: {self._start_error}")
        return [r if r is not None else failed for r in results]

    def _send_chunk(self, w: _Worker, fn, args_list, pending, results, timeout_s) -> None:
        # Chunks keep workers busy between replies; small enough to balance the tail of a batch.
        size = max(1, min(MAX_CHUNK, len(pending) // (2 * self.num_workers)))
        chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
        try:
            w.conn.send((fn, [(idx, args_list[idx]) for idx in chunk]))
        except Exception:  # noqa: BLE001 - an unpicklable item; pickling fails before any write
            for idx in reversed(chunk):
                try:
                    pickle.dumps(args_list[idx])
                    pending.appendleft(idx)
                except Exception as e:  # noqa: BLE001
                    results[idx] = TaskResult("error", error=f"arguments not sendable: {type(e).__name__}")
            return
        w.queue.extend(chunk)
        w.deadline = time.monotonic() + timeout_s

    def _receive(self, i: int, results, pending, timeout_s) -> None:
        w = self._workers[i]
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # the worker died (e.g. out of memory)
            if w.queue:
                results[w.queue.popleft()] = TaskResult("error", error="worker died")
                pending.extendleft(reversed(w.queue))
            if not w.ready:
                self._start_failures += 1
                self._start_error = _death_cause(w)
            self._replace(i)
            return
        if msg[0] == "ready":
            w.ready = True
            self._start_failures = 0
            return
        if msg[0] == "failed":
            self._start_failures += 1
            self._start_error = f"worker failed while starting: {msg[1]}"
            self._replace(i)
            return
        task_id, status, payload = msg
        if w.queue and task_id == w.queue[0]:
            w.queue.popleft()
            results[task_id] = TaskResult("ok", value=payload) if status == "ok" else TaskResult("error", error=payload)
            w.deadline = time.monotonic() + timeout_s  # the next item starts now

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
