"""Test-wide settings, applied before any test module imports JAX."""
import os

# The test extra installs libtpu and the CUDA plugin for compile-only targets (jaxr1.targets); on this CPU
# host JAX would otherwise probe both backends at start (warnings, the libtpu lock file) and register the
# CUDA plugin in a way that misses its SPMD custom-call partitioners. Subprocess tests inherit it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled XLA program after each test module.

    Each XLA CPU executable keeps a few memory mappings of JIT-ed code alive for as long as a cache holds it;
    one pytest process compiling the whole suite passed the kernel's vm.max_map_count (65,530 by default) at
    about 80% of the suite and LLVM's next mmap aborted the process inside a compile (CI: "Fatal Python
    error: Aborted" in backend_compile_and_load). Modules rarely share programs, so clearing costs little.
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()
