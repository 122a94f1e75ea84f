"""How many hosts the TPU slice this process runs on has: whether `jax.distributed.initialize()` is needed.

JAX's own cluster detection (jax._src.clusters.cloud_tpu_cluster) finds a pod's coordinator and process ids
once initialize() is called, but something has to decide to call it. On a GCE TPU VM (queued resources,
`gcloud compute tpus tpu-vm create`) the environment is empty: JAX reads the slice from the metadata server
(`worker-network-endpoints`, one entry per host), and so do we (then `accelerator-type`). GKE sets
TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES); multislice sets MEGASCALE_*; hand-made set-ups may set
TPU_HOST_BOUNDS / TPU_PROCESS_BOUNDS ("1,1,2": 2 hosts) or TPU_ACCELERATOR_TYPE. When none of these answers on a TPU VM the
count is unknown, and the caller initialises anyway: a pod run skipping it would train one independent copy
per host, all writing the same output_dir, while initialising a single host is harmless.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
import urllib.request

log = logging.getLogger("jaxr1.parallel")


def on_tpu_vm() -> bool:
    """JAX's own verdict (libtpu installed and TPU chips on the PCI bus), set when `import jax` ran
    cloud_tpu_init; it is a private attribute, hence the fallback on the TPU device files."""
    try:
        from jax._src import cloud_tpu_init
        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except (ImportError, AttributeError):
        return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def gce_metadata(key: str, timeout_s: float = 5.0) -> str | None:
    """An instance attribute from the GCE metadata server (the one JAX's GceTpuCluster reads), None if absent."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
                                 headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.read().decode()
    except OSError as e:   # URLError, HTTPError (404: not a TPU VM attribute), timeouts
        log.info("GCE metadata %s unavailable: %s", key, e)
        return None


def hosts_for_accelerator(accelerator_type: str) -> int | None:
    """Hosts of a slice from its type. v2-v5p count TensorCores (2 per chip, 4 chips per host: v5p-32 is 16
    chips on 4 hosts); v5e / v6e count chips, up to 8 on one host, 4 per host beyond (v5litepod-16: 4 hosts).
    None for a type not covered here (e.g. a newer generation)."""
    m = re.fullmatch(r"(v[2-5]p?|v5litepod|v5e|v6e)-(\d+)", accelerator_type.strip().lower())
    if not m:
        return None
    kind, n = m.group(1), int(m.group(2))
    if kind in ("v5litepod", "v5e", "v6e"):
        return 1 if n <= 8 else n // 4
    if kind == "v5":   # plain "v5-N" is not a Cloud TPU type; v5p is matched above
        return None
    return max(1, n // 8)


def _bounds(value: str) -> int:
    return math.prod(int(v) for v in value.split(","))


def slice_hosts(env=None) -> int | None:
    """Processes of this TPU run (hosts x slices): 1 off TPU or on one host, None on a TPU VM whose slice is unknown."""
    env = os.environ if env is None else env
    slices = int(env.get("MEGASCALE_NUM_SLICES", "1") or 1)
    if "MEGASCALE_COORDINATOR_ADDRESS" in env and slices == 1:
        return None   # multislice set-up without a slice count: let JAX decide
    for name in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):   # GKE, in JAX's order
        if env.get(name):
            return len(env[name].split(",")) * slices
    for name in ("TPU_PROCESS_BOUNDS", "TPU_HOST_BOUNDS"):
        if env.get(name):
            return _bounds(env[name]) * slices
    if env.get("TPU_ACCELERATOR_TYPE"):
        hosts = hosts_for_accelerator(env["TPU_ACCELERATOR_TYPE"])
        return None if hosts is None else hosts * slices
    if not on_tpu_vm():
        return slices
    if env.get("TPU_SKIP_MDS_QUERY"):   # told not to ask the metadata server (JAX honours it too)
        return None
    workers = gce_metadata("worker-network-endpoints")
    if workers:
        return len(workers.split(",")) * slices
    accelerator = gce_metadata("accelerator-type")
    hosts = hosts_for_accelerator(accelerator) if accelerator else None
    return None if hosts is None else hosts * slices
