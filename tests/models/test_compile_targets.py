"""The model's real programs compiled for real targets from this CPU host (jaxr1.targets): the forward with
images, the sampler's prefill and decode loop, on a 4-chip TPU v5p slice and on 4 H100s, with the kernel
`model.attention: auto` picks there. Asserts what the compiled programs contain: the splash Mosaic call on
TPU, the cuDNN fused attention on GPU, and a decode loop whose body gathers no weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxr1 import targets
from tests.models.test_attention_kernels import _inputs, _model

KERNEL_CALL = {"tpu-v5p": "tpu_custom_call", "h100": "__cudnn$fmha"}
PLATFORM = {"tpu-v5p": "tpu", "h100": "gpu"}


def _mesh(target):
    why = targets.available(target)
    if why:
        pytest.skip(why)
    from jaxr1.parallel import make_mesh
    return make_mesh(1, 4, 1, devices=targets.target_devices(target, 4))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype if not hasattr(
        x, "dtype") else x.dtype, sharding=s), tree, shardings)


def _setup(target, tmp_path, family="qwen2_5_vl"):
    from jaxr1.models import set_attention
    from jaxr1.parallel.rules import param_shardings
    mesh = _mesh(target)
    model, patch = _model(family, tmp_path)
    chosen = set_attention(model, "auto", platform=PLATFORM[target], dtype="bfloat16")
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    abstract_params = _abstract(params, param_shardings(params, mesh))
    return mesh, model, patch, chosen, graphdef, abstract_params


def _has_kernel(target, text):
    return any(c.startswith(KERNEL_CALL[target]) for c in targets.custom_calls(text))


@pytest.mark.parametrize("target", ["tpu-v5p", "h100"])
def test_forward_with_images_compiles_with_the_kernel(target, tmp_path):
    from jaxr1.parallel.rules import batch_shardings
    mesh, model, patch, chosen, graphdef, params = _setup(target, tmp_path)
    assert chosen["text"] == {"tpu-v5p": "splash", "h100": "cudnn"}[target]
    inputs, _ = _inputs(model, patch)
    args = (params, _abstract(inputs, batch_shardings(inputs, mesh)))
    text = targets.hlo_text(targets.compile_for(lambda p, i: nnx.merge(graphdef, p).forward(i), args,
                                                target=target, mesh=mesh))
    assert _has_kernel(target, text), sorted(targets.custom_calls(text))


@pytest.mark.parametrize("target", ["tpu-v5p", "h100"])
def test_sampler_prefill_has_the_kernel_and_decode_loop_gathers_no_weights(target, tmp_path):
    from jaxr1.sampling import make_spec, prepare_prompts
    from jaxr1.sampling.layout import gathered_param_shardings, prompt_shardings
    from jaxr1.sampling.sampler import _decode, _prefill
    from tests import hf_tiny
    mesh, model, patch, _, graphdef, params = _setup(target, tmp_path)
    cfg = model.config
    spec = make_spec(cfg, max_new_tokens=16, temperature=1.0, num_samples=2, eos_token_ids=(1,), mesh=mesh)
    grids = [(1, 4, 6)]
    pv, grid = hf_tiny.random_image_inputs(grids, patch=patch)
    ids, mask = hf_tiny.left_pad([hf_tiny.prompt_ids(9, grids, seed=s) for s in range(4)])
    batch = prepare_prompts(cfg, ids, mask, np.concatenate([pv] * 4), np.concatenate([grid] * 4), pad_token_id=0)
    sampler_params = _abstract(params, gathered_param_shardings(params, mesh))
    abstract_batch = _abstract(batch, prompt_shardings(batch, mesh))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def prefill(p, b, k):
        return _prefill(graphdef, p, b, k, 16, 1.0, 1.0, spec=spec)
    compiled = targets.compile_for(prefill, (sampler_params, abstract_batch, key), target=target, mesh=mesh)
    assert _has_kernel(target, targets.hlo_text(compiled))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), compiled.out_info,
                         compiled.output_shardings)
    decode = targets.compile_for(lambda p, s: _decode(graphdef, p, s, spec=spec), (sampler_params, state),
                                 target=target, mesh=mesh)
    found = targets.loop_body_collectives(targets.hlo_text(decode))
    assert not found["all-gather"], found["all-gather"][:3]
    rows = state.tokens.sharding.shard_shape(state.tokens.shape)[0]
    assert rows == state.tokens.shape[0] // 4, (rows, state.tokens.shape)   # 8 rows over fsdp=4: 2 per chip
