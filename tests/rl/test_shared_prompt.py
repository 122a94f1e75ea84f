"""The shared-prompt training forward (each prompt once through the decoder, its G completions attending to
its keys/values) gives the repeated [prompt | completion] forward's log-probs and gradients, per family, with
images, left padding and completions that stop at different lengths; and it runs fewer tokens."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.test_lora import TINY, image_batch

G, TC = 3, 9


def inputs(model):
    from jaxr1.models.inputs import PromptArrays, model_inputs
    prompt, deltas = model_inputs(model.config, PromptArrays(*image_batch(model.config)))
    rng = np.random.default_rng(1)
    lengths = np.array([1, 9, 4, 7, 2, 5])              # every row stops somewhere else (one at the limit)
    comp = rng.integers(10, 500, (2 * G, TC)).astype(np.int32)
    cmask = (np.arange(TC)[None] < lengths[:, None]).astype(np.int32)
    return prompt, deltas, jnp.asarray(comp * cmask), jnp.asarray(cmask)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("remat", [False, True])
def test_shared_prompt_equals_the_repeated_forward(family, remat):
    from flax import nnx

    from jaxr1 import models
    from jaxr1.rl.policy import completion_logprobs
    model = models.load_hf(TINY[family])
    prompt, deltas, comp, cmask = inputs(model)
    graphdef, params = nnx.split(model, nnx.Param)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(comp.shape), jnp.float32)

    def run(p, shared):
        lp, ent = completion_logprobs(nnx.merge(graphdef, p), prompt, deltas, comp, cmask, remat=remat,
                                      shared_prompt=shared)
        return (lp * weights * cmask).sum() + 0.1 * (ent * cmask).sum(), (lp, ent)

    out = {}
    for shared in (True, False):
        (loss, (lp, ent)), grads = jax.jit(jax.value_and_grad(run, has_aux=True), static_argnums=1)(params, shared)
        out[shared] = (np.asarray(lp), np.asarray(ent), jax.device_get(grads))
    (lp_s, ent_s, g_s), (lp_r, ent_r, g_r) = out[True], out[False]
    m = np.asarray(cmask, bool)
    np.testing.assert_allclose(lp_s[m], lp_r[m], atol=2e-5, rtol=1e-5, err_msg="log-probs")
    np.testing.assert_allclose(ent_s[m], ent_r[m], atol=2e-5, rtol=1e-5, err_msg="entropy")
    flat_s, flat_r = (jax.tree_util.tree_flatten_with_path(g)[0] for g in (g_s, g_r))
    for (path, a), (_, b) in zip(flat_s, flat_r):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.abs(b).max()), 1e-6)
        assert float(np.abs(a - b).max()) <= 1e-4 * scale + 1e-6, (jax.tree_util.keystr(path), np.abs(a - b).max(), scale)
    # the vision tower's gradient arrives through the shared prompt from all G completions
    assert float(np.abs(np.asarray(g_s["visual"]["patch_embed"])).max()) > 0


def test_shared_prompt_runs_each_prompt_once():
    """FLOPs of the compiled training forward+backward: the shared path does less work at G = 8."""
    from flax import nnx

    from jaxr1 import models
    from jaxr1.flops import dot_flops
    from jaxr1.rl.policy import completion_logprobs
    model = models.load_hf(TINY["qwen2_5_vl"])
    prompt, deltas, _, _ = inputs(model)
    g, tc = 8, 8
    comp, cmask = jnp.ones((2 * g, tc), jnp.int32), jnp.ones((2 * g, tc), jnp.int32)
    graphdef, params = nnx.split(model, nnx.Param)

    def flops(shared):   # matmul FLOPs with every scan step counted (cost_analysis counts a body once)
        loss = lambda p: completion_logprobs(nnx.merge(graphdef, p), prompt, deltas, comp, cmask,
                                             shared_prompt=shared)[0].sum()
        return dot_flops(jax.grad(loss), params)
    shared, repeated = flops(True), flops(False)
    tp = prompt.input_ids.shape[1]
    print(f"train fwd+bwd matmul FLOPs: shared {shared:.3e}, repeated {repeated:.3e}, "
          f"prompt {tp} tokens, G={g}, completion {tc}")
    assert shared < 0.6 * repeated
