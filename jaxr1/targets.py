"""Compile jitted functions for real accelerators from a CPU-only host (no TPU, no GPU), to check what XLA
makes of them: that a fused kernel is really in the program, which collectives a sharding produces.

How (JAX/jaxlib 0.10.2, found on a CPU host; pins in pyproject's `test` extra):

TPU (`target="tpu-v5p"`): the libtpu wheel ships compile-only topologies. `pip install "libtpu==0.0.42.*"`
(the pin jax 0.10.2 itself declares for `jax[tpu]`; newer libtpu wheels are for newer jaxlibs).
`jax.experimental.topologies.get_topology_desc("v5p:2x2x1", "tpu")` loads libtpu without any chip and
returns 4 compile-only devices ("TPU v5"); "v5p:2x2x2" gives 8, 2x2x4 16, 2x4x4 32. Smaller than one host
(2x2x1) is refused ("not divisible by the given (or default) chips_per_host_bounds"). A
`jax.sharding.Mesh` over those devices, `jax.ShapeDtypeStruct(..., sharding=NamedSharding(mesh, spec))`
arguments and `jax.jit(f).lower(*args).compile()` give a real TPU executable (Mosaic kernels included:
`custom_call_target="tpu_custom_call"`), readable with `.as_text()`; it cannot run.
libtpu takes a process-wide lock file (/tmp/libtpu_lockfile) when it initialises; a second process fails
with "ABORTED: Internal error when accessing libtpu multi-process lockfile", so this module sets
ALLOW_MULTIPLE_LIBTPU_LOAD=1 before loading it. With libtpu installed, every plain `import jax` process on a
non-TPU machine also tries the TPU backend (and the lock) and logs warnings; set JAX_PLATFORMS=cpu to skip.

NVIDIA (`target="h100"`): the CUDA PJRT plugin `pip install "jax-cuda12-plugin==0.10.2"` (pulls
`jax-cuda12-pjrt==0.10.2`; no CUDA toolkit, driver, cuDNN or GPU needed) can make a compile-only topology
from an XLA `stream_executor.GpuTargetConfigProto` in text form: `make_pjrt_topology("cuda", "",
topology="1x1x8", target_config=H100_SXM_TARGET_CONFIG)` ("<partitions>x<hosts per partition>x<devices per
host>"). The plugin embeds no target configs, so H100_SXM_TARGET_CONFIG below is written out (the numbers of
an H100 SXM5 80GB, as in XLA's xla/tools/hlo_opt/gpu_specs/h100_sxm.txtpb). Compiling needs no ptxas.
Two snags: (1) the plugin's initialize() checks the local CUDA runtime and, without one, raises ("Unable
to load CUDA. Is it installed?") before registering itself, unless JAX_PLATFORMS excludes cuda (e.g.
JAX_PLATFORMS=cpu) or JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 is set before the first backend use; this module
registers it by hand otherwise. (2) jax's cuDNN attention wrapper asks the local libcudnn for its version
at trace time ("RuntimeError: cuDNN not found."); `compile_for(target="h100")` answers with the
target config's cuDNN version while tracing. XLA then keeps the `__cudnn$fmha*` custom calls in the
optimised program. jax's wrapper also reads the *default* backend's compute capability (CPU here), so on
this host it allows head dims <= 128 only (256 needs the real Hopper device).
"""
from __future__ import annotations

import collections
import contextlib
import os
import re

import jax
import numpy as np

from jaxr1 import compile_cache

TARGETS = ("cpu", "tpu-v5p", "h100")

# v5p slice shapes by chip count (one host = 2x2x1 = 4 chips).
V5P_TOPOLOGIES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}

H100_SXM_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84978434048
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
    minor: 0
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 8
  patch: 0
}
runtime_version {
  major: 12
  minor: 8
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""
H100_CUDNN_VERSION = 90800   # dnn_version_info above, as cudnnGetVersion() reports it

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


class TargetUnavailable(RuntimeError):
    """The package that compiles for this target is not installed (tests skip on it)."""


def available(target: str) -> str | None:
    """None if `target` can be compiled for here, else the reason (what to pip install)."""
    import importlib.util
    if target == "cpu":
        return None
    if target == "tpu-v5p":
        return None if importlib.util.find_spec("libtpu") else 'libtpu is not installed (pip install "libtpu==0.0.42.*")'
    if target == "h100":
        ok = importlib.util.find_spec("jax_plugins.xla_cuda12") or importlib.util.find_spec("jax_plugins.xla_cuda13")
        return None if ok else 'the CUDA PJRT plugin is not installed (pip install "jax-cuda12-plugin==0.10.2")'
    raise ValueError(f"unknown target {target!r} (expected one of {TARGETS})")


def target_devices(target: str, num_devices: int) -> list:
    """`num_devices` devices to build a Mesh from: real host devices for "cpu" (force them with
    jax.config.update("jax_num_cpu_devices", n) or XLA_FLAGS=--xla_force_host_platform_device_count=n before
    the first jax use), compile-only devices for "tpu-v5p" (4, 8, 16, ... chips) and "h100"."""
    why = available(target)
    if why:
        raise TargetUnavailable(why)
    if target == "cpu":
        devs = jax.devices("cpu")
        if len(devs) < num_devices:
            raise ValueError(f"{num_devices} cpu devices wanted, {len(devs)} exist (set jax_num_cpu_devices "
                             f"before the first jax use)")
        return list(devs[:num_devices])
    if target == "tpu-v5p":
        if num_devices not in V5P_TOPOLOGIES:
            raise ValueError(f"tpu-v5p: {num_devices} chips is not a slice shape here; use one of "
                             f"{sorted(V5P_TOPOLOGIES)}")
        return list(_tpu_topology("v5p:" + V5P_TOPOLOGIES[num_devices]))
    return list(_cuda_topology(f"1x1x{num_devices}", H100_SXM_TARGET_CONFIG))


def _tpu_topology(name: str):
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # read by libtpu when it initialises
    from jax.experimental import topologies
    return topologies.get_topology_desc(name, "tpu").devices


def _cuda_topology(shape: str, target_config: str):
    from jax._src import xla_bridge as xb
    from jax._src.lib import xla_client

    xb._discover_and_register_pjrt_plugins()
    if "cuda" in xb._topology_factories:
        topo = xb.make_pjrt_topology("cuda", "", topology=shape, target_config=target_config)
    else:
        # initialize() refused (no local CUDA runtime): load the plugin library ourselves, compile-only
        import importlib
        try:
            plug = importlib.import_module("jax_plugins.xla_cuda12")
        except ImportError:
            plug = importlib.import_module("jax_plugins.xla_cuda13")
        global _cuda_c_api
        if _cuda_c_api is None:
            _cuda_c_api = xla_client.load_pjrt_plugin_dynamically("cuda", str(plug._get_library_path()))
        topo = xla_client.make_c_api_device_topology(_cuda_c_api, "", topology=shape, target_config=target_config)
    return topo._make_compile_only_devices()


_cuda_c_api = None


@contextlib.contextmanager
def _cudnn_version(version: int):
    """jax's cuDNN attention asks the local libcudnn for its version while tracing; answer for the target."""
    from jax._src.cudnn import fused_attention_stablehlo as fa
    saved = fa.check_cudnn_version
    fa.check_cudnn_version = lambda: version
    try:
        yield
    finally:
        fa.check_cudnn_version = saved


def compile_for(fn, args, *, target: str, mesh: jax.sharding.Mesh | None = None, **jit_kwargs):
    """`jax.jit(fn).lower(*args).compile()` for `target`. args: a tuple of pytrees of ShapeDtypeStruct whose
    shardings name devices of `target_devices(target, n)`; without shardings, the first device of `mesh`
    (or of a fresh 1-device target) is used. `mesh` is also made the ambient mesh while tracing
    (`jax.set_mesh`), which is what lets jaxr1.ops.attention shard_map its Pallas kernel."""
    if mesh is None:
        devs = _devices_of(args) or target_devices(target, 4 if target == "tpu-v5p" else 1)
        mesh = jax.sharding.Mesh(np.asarray(devs[:1]), ("data",))
    args = tuple(jax.tree.map(lambda a: _with_sharding(a, mesh), args))
    with compiling_for(target, mesh):
        return jax.jit(fn, **jit_kwargs).lower(*args).compile()


# The platform name each target's programs are lowered for, and the memory a program may use per device
# (an H100 80GB leaves about 73 GiB to XLA after the CUDA context and its reserve; a v5p chip has 95 GiB).
PLATFORM = {"cpu": "cpu", "tpu-v5p": "tpu", "h100": "gpu"}
USABLE_MEMORY_GB = {"tpu-v5p": 95.0, "h100": 73.0}
CHIPS_PER_HOST = {"tpu-v5p": 4, "h100": 8}   # a v5p VM host has 4 chips; an H100 node 8 GPUs


@contextlib.contextmanager
def compiling_for(target: str, mesh: jax.sharding.Mesh):
    """Around tracing and compiling programs for `target`: `mesh` is the ambient mesh (jaxr1.ops.attention
    shard_maps its Pallas kernel over it) and, for h100, jax's cuDNN version query answers for the target."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.set_mesh(mesh))
        if target != "cpu":
            stack.enter_context(compile_cache.no_writes())
        if target == "h100":
            stack.enter_context(_cudnn_version(H100_CUDNN_VERSION))
        yield


def _devices_of(args) -> list:
    for leaf in jax.tree.leaves(args):
        sh = getattr(leaf, "sharding", None)
        if sh is not None:
            return list(sh.mesh.devices.flat)
    return []


def _with_sharding(a, mesh):
    if isinstance(a, jax.ShapeDtypeStruct) and a.sharding is None:
        spec = jax.sharding.PartitionSpec()
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.NamedSharding(mesh, spec))
    return a


def hlo_text(compiled) -> str:
    """The optimised (post-partitioning, post-fusion) HLO of a compiled executable."""
    return compiled.as_text()


def custom_calls(text: str) -> set[str]:
    """custom_call_target names in HLO text ("tpu_custom_call" = a Mosaic/Pallas kernel,
    "__cudnn$fmhaSoftmax" etc. = cuDNN fused attention)."""
    return set(re.findall(r'custom_call_target="([^"]+)"', text))


def collectives(text: str) -> collections.Counter:
    """How many of each collective op the HLO text holds (async -start/-done pairs count once)."""
    ops = re.findall(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", text)
    return collections.Counter(ops)


# ---- what runs inside loops (the decode loop must not gather weights per step)
_OP = re.compile(r"(?<![\w.%-])(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_CALLED = re.compile(r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def computations(hlo: str) -> dict[str, list[str]]:
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            comps[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps


def loop_body_collectives(hlo: str, part: str = "body") -> dict[str, list[str]]:
    """Collective instructions (op -> instruction lines) in every while loop's `part` ("body" or "condition")
    of `hlo` and in everything those call (fusions, nested loops, conditionals)."""
    comps = computations(hlo)
    bodies = {m for lines in comps.values() for line in lines
              for m in re.findall(rf"\b{part}=%?([\w.\-]+)", line)}
    seen, todo = set(), list(bodies)
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            todo += _CALLED.findall(line)
            for group in _BRANCHES.findall(line):
                todo += [g.strip().lstrip("%") for g in group.split(",")]
    found = {op: [] for op in COLLECTIVES}
    for c in seen:
        for line in comps[c]:
            m = _OP.search(line)
            if m:
                found[m.group(1)].append(line.strip())
    return found
