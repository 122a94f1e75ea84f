"""JAX's persistent compilation cache, on by default, so a restarted or resumed run loads the XLA programs it
compiled before instead of compiling them again (minutes at 3B and up).

`compilation_cache: auto` (the default) uses $JAX_COMPILATION_CACHE_DIR when set, else
$XDG_CACHE_HOME/jaxr1/xla (~/.cache/jaxr1/xla); a path uses that directory; `off` turns it off. Entries are keyed
by the program, the compiler options, the devices and the jax/jaxlib versions, so a changed config or an
upgraded jax compiles afresh rather than loading something stale.
"""
from __future__ import annotations

import contextlib
import logging
import os

import jax

log = logging.getLogger("jaxr1.compile_cache")

OFF = ("off", "none", "false", "")
# Programs loaded from the cache and compiled afresh this process, and the compile seconds the loads saved.
counts = {"loaded": 0, "compiled": 0, "saved_s": 0.0}
_EVENTS = {"/jax/compilation_cache/cache_hits": "loaded", "/jax/compilation_cache/cache_misses": "compiled"}


def cache_dir(setting: str) -> str | None:
    """The directory `setting` names (None: off)."""
    setting = str(setting).strip()
    if setting.lower() in OFF:
        return None
    if setting.lower() in ("on", "true"):
        setting = "auto"
    if setting != "auto":
        return os.path.abspath(os.path.expanduser(setting))
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["JAX_COMPILATION_CACHE_DIR"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxr1", "xla")


def enable(setting: str) -> str | None:
    """Point JAX's persistent cache at `setting`'s directory (None when off)."""
    path = cache_dir(setting)
    jax.config.update("jax_compilation_cache_dir", path)
    if path is None:
        return None
    os.makedirs(path, exist_ok=True)
    log.info("XLA compilation cache: %s (compilation_cache=off to disable)", path)
    _listen()
    return path


def summary() -> str:
    return (f"XLA compilation cache: {counts['loaded']} programs loaded ({counts['saved_s']:.0f}s of compiling "
            f"saved), {counts['compiled']} compiled")


def _listen():
    if getattr(_listen, "done", False):
        return
    _listen.done = True

    def on_event(event, **_):
        if event in _EVENTS:
            counts[_EVENTS[event]] += 1

    def on_duration(event, duration, **_):
        if event == "/jax/compilation_cache/compile_time_saved_sec":
            counts["saved_s"] += max(float(duration), 0.0)

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)


@contextlib.contextmanager
def no_writes():
    """Around compiles for a compile-only target (jaxr1.targets: TPU / H100 without the hardware): such a client
    writes cache entries it can never load back (JAX warns "PjRtCompiler must be constructed with a Client"
    and compiles again), so none are written; a lookup of a key never written is a plain miss."""
    saved = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved)
