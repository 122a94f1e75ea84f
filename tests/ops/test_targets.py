"""Compile for real accelerators from this CPU host (jaxr1.targets): the fused attention kernels are really
in the compiled programs, and a sharded matmul on a v5p slice has the collective the sharding implies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxr1 import targets
from jaxr1.ops.attention import attention


def need(target):
    why = targets.available(target)
    if why:
        pytest.skip(why)


def attention_args(mesh, dtype, b=4, t=256, h=4, hkv=2, d=128, spec=P("data", None)):
    sh = NamedSharding(mesh, spec)
    return (jax.ShapeDtypeStruct((b, t, h, d), dtype, sharding=sh),
            jax.ShapeDtypeStruct((b, t, hkv, d), dtype, sharding=sh),
            jax.ShapeDtypeStruct((b, t, hkv, d), dtype, sharding=sh),
            jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=NamedSharding(mesh, P(*spec[:2]))))


def train_step(impl):
    """Forward + gradients of the causal, padded self-attention the text model runs."""
    def step(q, k, v, seg):
        def loss(q, k, v):
            o = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, implementation=impl)
            return jnp.sum(o.astype(jnp.float32) ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    return step


@pytest.fixture(scope="module")
def v5p_mesh():
    need("tpu-v5p")
    devs = targets.target_devices("tpu-v5p", 4)
    assert len(devs) == 4 and "TPU v5" in devs[0].device_kind
    return Mesh(np.asarray(devs), ("data",))


def test_v5p_splash_compiles_to_a_mosaic_kernel_and_xla_does_not(v5p_mesh):
    args = attention_args(v5p_mesh, jnp.bfloat16)
    splash = targets.hlo_text(targets.compile_for(train_step("splash"), args, target="tpu-v5p", mesh=v5p_mesh))
    assert "tpu_custom_call" in targets.custom_calls(splash)
    # shard_mapped over the batch: no gathering of q/k/v for the kernel
    assert not targets.collectives(splash)["all-gather"]
    xla = targets.hlo_text(targets.compile_for(train_step("xla"), args, target="tpu-v5p", mesh=v5p_mesh))
    assert "tpu_custom_call" not in targets.custom_calls(xla)


def test_v5p_sharded_matmul_shows_its_collective(v5p_mesh):
    # contraction dim sharded: each chip holds a partial sum, the result needs an all-reduce
    x = jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=NamedSharding(v5p_mesh, P(None, "data")))
    w = jax.ShapeDtypeStruct((512, 1024), jnp.float32, sharding=NamedSharding(v5p_mesh, P("data", None)))
    text = targets.hlo_text(targets.compile_for(lambda x, w: x @ w, (x, w), target="tpu-v5p", mesh=v5p_mesh,
                                                out_shardings=NamedSharding(v5p_mesh, P())))
    assert targets.collectives(text)["all-reduce"] >= 1
    # batch-sharded rows, replicated weights: nothing to communicate
    x = jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=NamedSharding(v5p_mesh, P("data", None)))
    w = jax.ShapeDtypeStruct((512, 1024), jnp.float32, sharding=NamedSharding(v5p_mesh, P()))
    text = targets.hlo_text(targets.compile_for(lambda x, w: x @ w, (x, w), target="tpu-v5p", mesh=v5p_mesh))
    assert not sum(targets.collectives(text).values())


def test_v5p_eight_chips():
    need("tpu-v5p")
    assert len(targets.target_devices("tpu-v5p", 8)) == 8


def test_h100_cudnn_attention_compiles_to_cudnn_fmha():
    need("h100")
    devs = targets.target_devices("h100", 1)
    assert "H100" in devs[0].device_kind
    mesh = Mesh(np.asarray(devs), ("data",))
    args = attention_args(mesh, jnp.bfloat16, b=2, spec=P(None, None))
    calls = targets.custom_calls(targets.hlo_text(targets.compile_for(train_step("cudnn"), args, target="h100",
                                                                      mesh=mesh)))
    assert any(c.startswith("__cudnn$fmha") and "Backward" not in c for c in calls), calls
    assert any(c.startswith("__cudnn$fmha") and "Backward" in c for c in calls), calls
    xla = targets.custom_calls(targets.hlo_text(targets.compile_for(train_step("xla"), args, target="h100",
                                                                    mesh=mesh)))
    assert not any(c.startswith("__cudnn$fmha") for c in xla)


def test_helpers_read_hlo_text():
    text = """
  %all-gather-start = (f32[8]{0}, f32[32]{0}) all-gather-start(f32[8]{0} %p), dimensions={0}
  %all-gather-done = f32[32]{0} all-gather-done((f32[8]{0}, f32[32]{0}) %all-gather-start)
  %ar = f32[32]{0} all-reduce(f32[32]{0} %x), to_apply=%add
  %cc = bf16[2,4]{1,0} custom-call(bf16[2,4]{1,0} %y), custom_call_target="tpu_custom_call"
"""
    assert targets.collectives(text) == {"all-gather": 1, "all-reduce": 1}
    assert targets.custom_calls(text) == {"tpu_custom_call"}


def test_cpu_target_and_unknown_targets():
    devs = targets.target_devices("cpu", 1)
    assert devs[0].platform == "cpu"
    text = targets.hlo_text(targets.compile_for(lambda x: x * 2, (jax.ShapeDtypeStruct((8,), jnp.float32),),
                                                target="cpu"))
    assert "multiply" in text
    with pytest.raises(ValueError):
        targets.available("v4")
    if not targets.available("tpu-v5p"):
        with pytest.raises(ValueError, match="slice shape"):
            targets.target_devices("tpu-v5p", 3)
