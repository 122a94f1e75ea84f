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


def test_vision_window_layers_compile_with_cudnn_for_h100(tmp_path):
    """On GPU the vision tower's window layers (windows as blocks) run cuDNN: its fused attention is in the
    compiled tower (the tiny Qwen2.5-VL has a window layer and a full one; the full one runs XLA)."""
    from jaxr1.parallel.rules import batch_shardings
    mesh, model, patch, chosen, graphdef, params = _setup("h100", tmp_path)
    assert chosen["vision"] == "cudnn"
    inputs, _ = _inputs(model, patch)
    args = (params, _abstract(inputs, batch_shardings(inputs, mesh)))
    text = targets.hlo_text(targets.compile_for(lambda p, i: nnx.merge(graphdef, p).encode_images(i.vision), args,
                                                target="h100", mesh=mesh))
    assert _has_kernel("h100", text), sorted(targets.custom_calls(text))


@pytest.mark.parametrize("target", ["tpu-v5p", "h100"])
def test_sampler_prefill_has_the_kernel_and_decode_loop_gathers_no_weights(target, tmp_path):
    from jaxr1.sampling import make_spec, prepare_prompts
    from jaxr1.sampling.layout import gathered_param_shardings, prompt_shardings
    from jaxr1.sampling.sampler import _decode, _prefill
    from tests import hf_tiny
    mesh, model, patch, _, graphdef, params = _setup(target, tmp_path)
    cfg = model.config
    spec = make_spec(cfg, max_new_tokens=16, temperature=1.0, num_generations=2, eos_token_ids=(1,), mesh=mesh)
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


@pytest.mark.parametrize("target", ["tpu-v5p", "h100"])
def test_whole_model_train_step_compiles_with_the_kernel_forward_and_backward(target, tmp_path):
    """value_and_grad of the trainer's log-probs (shared prompt, completions packed into rows: the default
    layout) on 4 prompts with an image each x G = 2, the batch split over fsdp = 4: the kernel is in the
    forward and in the backward. (With rows of 28 tokens, before rl.pack.ROW_MULTIPLE, the H100 compile
    failed: "Couldn't find output tile sizes" in the packed attention's dots.)"""
    from jaxr1.parallel.rules import batch_shardings
    from jaxr1.rl.pack import choose_layout, pack
    from jaxr1.rl.policy import completion_logprobs
    from tests import hf_tiny
    mesh, model, patch, _, graphdef, params = _setup(target, tmp_path)
    grids = [(1, 4, 6)]
    pv, grid = hf_tiny.random_image_inputs(grids, patch=patch)
    ids, mask = hf_tiny.left_pad([hf_tiny.prompt_ids(9, grids, seed=s) for s in range(4)])
    pad = 64 - ids.shape[1]   # the pipeline pads prompts to data.pad_multiple (64)
    ids, mask = np.pad(ids, ((0, 0), (pad, 0))), np.pad(mask, ((0, 0), (pad, 0)))
    inputs, deltas = model.prepare_inputs(model.config, ids, mask, np.concatenate([pv] * 4),
                                          np.concatenate([grid] * 4))
    lengths = np.array([12, 5, 11, 4, 12, 5, 11, 4], np.int32)   # packs 4 rows of 16 only two prompts a row
    L, R, K = choose_layout([lengths], 2, 16, 16, 4)
    assert K == 2   # rows holding two prompts' completions compile too
    comp = np.ones((8, 16), np.int32)
    cmask = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
    batch = (inputs, np.asarray(deltas, np.int32), comp, cmask, pack(comp, lengths, 2, L, R, K))

    def loss(p, b):
        inputs, deltas, comp, cmask, packed = b
        lp, _ = completion_logprobs(nnx.merge(graphdef, p), inputs, deltas, comp, cmask, packed=packed)
        return (lp * cmask).sum()
    args = (params, _abstract(batch, batch_shardings(batch, mesh)))
    text = targets.hlo_text(targets.compile_for(jax.value_and_grad(loss), args, target=target, mesh=mesh))
    calls = [c for c in targets.custom_calls(text) if c.startswith(KERNEL_CALL[target])]
    if target == "h100":
        assert any("Backward" in c for c in calls) and any("Backward" not in c for c in calls), calls
    else:   # splash: the forward kernel and the backward's dq / dkv kernels
        assert len(set(calls)) >= 1 and text.count(KERNEL_CALL[target]) >= 2, calls
