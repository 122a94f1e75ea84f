"""check_batch_layout: a micro-batch that would not split over data x fsdp is an error at start, with a fix;
shard_batch never replicates a batch array silently."""
import glob
import os
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from jaxr1.models.qwen2_5_vl import ModelConfig
from jaxr1.parallel import MeshError, check_batch_layout, mesh_shape
from jaxr1.parallel.mesh import AXES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(batch_size, mbp, g, data=1, fsdp=8, tensor=1, processes=1, model=None):
    return check_batch_layout(SimpleNamespace(batch_size=batch_size),
                              SimpleNamespace(micro_batch_prompts=mbp, num_generations=g),
                              {"data": data, "fsdp": fsdp, "tensor": tensor}, processes, model)


def test_rows_that_split_pass():
    layout = _check(16, 2, 8)
    assert (layout.micro_batches, layout.mb_prompts, layout.mb_rows, layout.shards) == (8, 2, 16, 8)
    assert not layout.prompts_split          # 2 prompts over 8 chips: the prompt side is replicated by design
    assert _check(16, 0, 8).mb_rows == 128   # 0: the whole batch is one micro-batch
    assert _check(8, 8, 2, data=2, fsdp=4).prompts_split


def test_v5p32_old_setting_names_the_numbers_and_fixes():
    with pytest.raises(MeshError) as e:
        _check(4, 1, 8, fsdp=16, processes=4, model=ModelConfig.qwen2_5_vl_7b())
    msg = str(e.value)
    assert "1 prompt x 8 samples = 8 rows" in msg and "1 x 16 = 16 chips" in msg
    assert "rl.micro_batch_prompts=2 (16 rows)" in msg and "parallel.fsdp=8 parallel.tensor=2" in msg
    assert "\n" not in msg
    # Both suggestions really pass.
    _check(4, 2, 8, fsdp=16, processes=4)
    _check(4, 1, 8, fsdp=8, tensor=2, processes=4, model=ModelConfig.qwen2_5_vl_7b())


def test_mesh_suggestion_respects_heads_and_falls_back_to_more_samples():
    # Qwen2.5-VL-3B has 2 KV heads: tensor=4 would split one, so only more samples are offered.
    with pytest.raises(MeshError, match=r"use rl.num_generations=8 \(8 rows\)$"):
        _check(1, 0, 2, data=2, fsdp=4, model=ModelConfig.qwen2_5_vl_3b())
    with pytest.raises(MeshError, match="use parallel.data=1 parallel.fsdp=2 parallel.tensor=4$"):
        _check(1, 0, 2, data=2, fsdp=4)


def test_micro_batch_prompts_must_split_the_step():
    with pytest.raises(MeshError, match=r"micro_batch_prompts=3 .* 16 prompts .*4 processes.*1, 2, 4, 8, 16"):
        _check(4, 3, 8, fsdp=16, processes=4)
    with pytest.raises(MeshError, match="micro_batch_prompts=32"):
        _check(16, 32, 8)


def test_tensor_must_divide_heads():
    with pytest.raises(MeshError, match="num_key_value_heads=2"):
        _check(16, 2, 8, fsdp=2, tensor=4, model=ModelConfig.qwen2_5_vl_3b())


def _hosts(path):
    """The host count a config's header states ("4 hosts x 4 chips"); one node otherwise."""
    m = re.search(r"(\d+) hosts x (\d+) chips", open(path).read().split("\nmodel:")[0])
    return (int(m.group(1)), int(m.group(1)) * int(m.group(2))) if m else (1, None)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))), ids=os.path.basename)
def test_shipped_configs_split_their_batches(path):
    from jaxr1.config import load_config
    from jaxr1.dry_run import model_config, required_devices
    cfg = load_config(path)
    devices = required_devices(cfg.parallel)
    assert devices, "a shipped config names every mesh axis (the dry run forces that many devices)"
    hosts, chips = _hosts(path)
    assert chips in (None, devices), f"header says {chips} chips, the mesh {devices}"
    shape = dict(zip(AXES, mesh_shape(cfg.parallel.data, cfg.parallel.fsdp, cfg.parallel.tensor, devices)))
    check_batch_layout(cfg.data, cfg.rl, shape, hosts, model_config(cfg.model.path))


SHARD_SCRIPT = textwrap.dedent("""
    import logging, numpy as np
    from jaxr1.parallel import make_mesh, shard_batch, check_batch_layout, MeshError
    from types import SimpleNamespace as NS
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    mesh = make_mesh(1, 8, 1)
    layout = check_batch_layout(NS(batch_size=16), NS(micro_batch_prompts=2, num_generations=8), mesh.shape)
    tree = {"completions": np.zeros((layout.mb_rows, 4)), "prompt": {"input_ids": np.zeros((2, 4)),
            "positions": np.zeros((3, 2, 4))}}
    for _ in range(2):   # the warning comes once
        out = shard_batch(tree, mesh)
    print("rows shard", out["completions"].sharding.shard_shape((16, 4)))
    print("prompt replicated", out["prompt"]["input_ids"].sharding.is_fully_replicated)
    try:
        check_batch_layout(NS(batch_size=16), NS(micro_batch_prompts=1, num_generations=2), mesh.shape)
    except MeshError as e:
        print("error:", e)
""")


def test_shard_batch_on_8_devices_splits_rows_and_warns_once_about_the_rest():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "rows shard (2, 4)" in out and "prompt replicated True" in out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING") and "not split" in line]
    assert len(warnings) == 1 and "prompt/input_ids[2]" in warnings[0] and "prompt/positions[2]" in warnings[0]
    assert "completions" not in warnings[0]
    assert "error: a micro-batch of 1 prompt x 2 samples = 2 rows" in out and "rl.micro_batch_prompts=4" in out
