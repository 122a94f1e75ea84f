"""initialize_from_env decides from faked environments whether to call jax.distributed.initialize()."""
import jax
import pytest

from jaxr1.parallel import distributed, tpu

CLUSTER_VARS = ["JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "SLURM_NTASKS",
                "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "TPU_HOST_BOUNDS",
                "TPU_PROCESS_BOUNDS", "TPU_ACCELERATOR_TYPE", "TPU_SKIP_MDS_QUERY", "MEGASCALE_COORDINATOR_ADDRESS",
                "MEGASCALE_NUM_SLICES"]


@pytest.fixture
def fake(monkeypatch):
    """A plain CPU host: no cluster variables, no TPU, no metadata server; initialize() only recorded."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    calls, metadata = [], {}

    def queried(key, timeout_s=5.0):
        metadata.setdefault("queried", []).append(key)
        return metadata.get(key)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(tpu, "on_tpu_vm", lambda: False)
    monkeypatch.setattr(tpu, "gce_metadata", queried)

    def tpu_vm(**attributes):
        monkeypatch.setattr(tpu, "on_tpu_vm", lambda: True)
        metadata.update(attributes)
    return calls, metadata, tpu_vm


def test_plain_cpu_host_does_not_initialize(fake):
    calls, metadata, _ = fake
    assert distributed.initialize_from_env() is False
    assert calls == [] and "queried" not in metadata   # no metadata server asked off a TPU VM


def test_gce_tpu_vm_pod_initializes_without_arguments(fake):
    calls, _, tpu_vm = fake
    tpu_vm(**{"worker-network-endpoints": "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5"})   # v5p-32: 4 hosts
    distributed.initialize_from_env()
    assert calls == [{}]


def test_gce_tpu_vm_pod_from_accelerator_type_when_endpoints_are_missing(fake):
    calls, _, tpu_vm = fake
    tpu_vm(**{"accelerator-type": "v5p-32"})
    distributed.initialize_from_env()
    assert calls == [{}]


@pytest.mark.parametrize("attributes", [{"worker-network-endpoints": "10.0.0.2"}, {"accelerator-type": "v5p-8"},
                                        {"accelerator-type": "v5litepod-8"}], ids=["endpoints", "v5p-8", "v5e-8"])
def test_single_host_tpu_vm_does_not_initialize(fake, attributes):
    calls, _, tpu_vm = fake
    tpu_vm(**attributes)
    assert distributed.initialize_from_env() is False
    assert calls == []


def test_tpu_vm_with_unknown_slice_initializes(fake):
    """Skipping it on a pod would train one copy per host; JAX's own detection settles a single host."""
    calls, _, tpu_vm = fake
    tpu_vm()
    distributed.initialize_from_env()
    assert calls == [{}]


@pytest.mark.parametrize("hosts,called", [("tpu-0,tpu-1,tpu-2,tpu-3", True), ("localhost", False)])
def test_gke_tpu(fake, monkeypatch, hosts, called):
    calls, _, tpu_vm = fake
    tpu_vm()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", hosts)
    monkeypatch.setenv("TPU_WORKER_ID", "0")
    distributed.initialize_from_env()
    assert calls == ([{}] if called else [])


@pytest.mark.parametrize("env,called", [({"TPU_ACCELERATOR_TYPE": "v6e-16"}, True),
                                        ({"TPU_ACCELERATOR_TYPE": "v5litepod-4"}, False),
                                        ({"TPU_HOST_BOUNDS": "1,1,2"}, True), ({"TPU_HOST_BOUNDS": "1,1,1"}, False),
                                        ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, True),
                                        ({"MEGASCALE_NUM_SLICES": "2", "TPU_ACCELERATOR_TYPE": "v5p-8"}, True)])
def test_tpu_environment_variables(fake, monkeypatch, env, called):
    calls, _, _ = fake
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    distributed.initialize_from_env()
    assert calls == ([{}] if called else [])


def test_slurm_leaves_it_to_jax(fake, monkeypatch):
    calls, _, _ = fake
    monkeypatch.setenv("SLURM_NTASKS", "2")
    distributed.initialize_from_env()
    assert calls == [{}]
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.initialize_from_env() is False and calls == [{}]


def test_explicit_coordinator(fake, monkeypatch):
    calls, _, _ = fake
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    distributed.initialize_from_env()
    assert calls == [{"coordinator_address": "10.0.0.2:1234", "num_processes": 2, "process_id": 1}]


@pytest.mark.parametrize("name,hosts", [("v5p-8", 1), ("v5p-32", 4), ("v4-16", 2), ("v3-8", 1), ("v5litepod-16", 4),
                                        ("v5e-8", 1), ("v6e-256", 64), ("tpu7x-16", None), ("v5-8", None)])
def test_hosts_for_accelerator(name, hosts):
    assert tpu.hosts_for_accelerator(name) == hosts


def test_on_tpu_vm_matches_the_backend():
    assert tpu.on_tpu_vm() == (jax.default_backend() == "tpu")
