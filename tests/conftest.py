"""Test-wide settings, applied before any test module imports JAX."""
import os

# The test extra installs libtpu and the CUDA plugin for compile-only targets (jaxr1.targets); on this CPU
# host JAX would otherwise probe both backends at start (warnings, the libtpu lock file) and register the
# CUDA plugin in a way that misses its SPMD custom-call partitioners. Subprocess tests inherit it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
