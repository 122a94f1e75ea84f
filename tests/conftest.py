"""Test-wide settings (applied before any test module imports JAX), the order tests run in, and the time of
each tier (fast suite, dry runs, other slow tests) printed at the end."""
import gc
import os
import tempfile
import time

import pytest

# The test extra installs libtpu and the CUDA plugin for compile-only targets (jaxr1.targets); on this CPU
# host JAX would otherwise probe both backends at start (warnings, the libtpu lock file) and register the
# CUDA plugin in a way that misses its SPMD custom-call partitioners. Subprocess tests inherit it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole session, shared by the xdist workers and every `python -m jaxr1.*`
# subprocess (they inherit the variable; jaxr1's compilation_cache=auto reads it): programs that several tests
# compile (the tiny models' steps, the sampler) compile once per session. A fresh directory, so that no test
# depends on what an earlier session left; set JAX_COMPILATION_CACHE_DIR to choose one yourself.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxr1-tests-xla-"))


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled XLA program after each test module.

    Each XLA CPU executable keeps a few memory mappings of JIT-ed code alive for as long as a cache holds it;
    one pytest process compiling the whole suite passed the kernel's vm.max_map_count (65,530 by default) at
    about 80% of the suite and LLVM's next mmap aborted the process inside a compile (CI: "Fatal Python
    error: Aborted" in backend_compile_and_load). The persistent cache above brings back what a later module
    compiles again.
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()


# ------------------------------------------------------------------------------------------- tiers and order
TIERS = ("dry runs", "slow", "fast")
# Modules of several minutes (CI's --durations), started first within their tier so that no long module is
# left for the end while the other worker idles. Only the order depends on this list.
LONG_MODULES = ("tests.parallel.test_mesh", "tests.train.test_first_run", "tests.rl.test_pack",
                "tests.sampling.test_sharding", "tests.rl.test_step")


def tier(nodeid: str, keywords) -> str:
    if "slow" not in keywords:
        return "fast"
    return "dry runs" if nodeid.startswith("tests/parallel/test_dry_run.py") else "slow"


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups it adds to node ids
def pytest_collection_modifyitems(config, items):
    """Longest first, so the two xdist workers finish together: the dry runs (a few minutes each, one
    subprocess each, no shared state: spread one by one), then the other slow tests, then the fast suite. A
    module outside the dry runs stays on one worker (module-scoped fixtures, e.g. a training run several tests
    read, run once)."""
    # TPU compiles are the longest dry runs (5-9 min each, 2-4 for H100)
    items.sort(key=lambda it: (TIERS.index(tier(it.nodeid, it.keywords)), "v5p" not in it.nodeid,
                               it.module.__name__ not in LONG_MODULES))
    for it in items:
        if tier(it.nodeid, it.keywords) != "dry runs":
            it.add_marker(pytest.mark.xdist_group(it.module.__name__))


_spans: dict[str, list] = {t: [] for t in TIERS}


def pytest_runtest_logreport(report):
    # The controller sees every worker's reports; a test's span runs from its setup's start to its
    # teardown's stop.
    if report.when in ("setup", "teardown"):
        _spans[tier(report.nodeid, report.keywords)].append((report.nodeid, report.when, report.start, report.stop))


def pytest_terminal_summary(terminalreporter):
    rows = []
    for name in TIERS:
        spans = _spans[name]
        if not spans:
            continue
        starts = {n: s for n, w, s, _ in spans if w == "setup"}
        stops = {n: e for n, w, _, e in spans if w == "teardown"}
        busy = sum(stops[n] - starts[n] for n in starts if n in stops)
        rows.append(f"{name}: {len(starts)} tests, {busy / 60:.1f} min of test time, from "
                    f"{time.strftime('%H:%M:%S', time.localtime(min(starts.values())))} to "
                    f"{time.strftime('%H:%M:%S', time.localtime(max(stops.values())))}")
    if rows:
        terminalreporter.write_sep("-", "time per tier (tiers share the workers, so their spans overlap)")
        for r in rows:
            terminalreporter.write_line(r)
