"""The trainer's log-prob path (jaxr1.rl.policy.completion_logprobs) runs on Qwen2-VL unchanged: it equals the
full forward pass over [prompt | completion], and gradients reach the vision tower under remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxr1.rl.policy import completion_logprobs
from jaxr1.sampling import prepare_prompts
from tests.hf_tiny import prompt_ids, random_image_inputs


@pytest.mark.parametrize("qwen2_vl_pair", ["untied"], indirect=True)
def test_completion_logprobs_match_the_full_forward_and_reach_the_vision_tower(qwen2_vl_pair):
    from jaxr1.models.qwen2_vl import prepare_inputs
    _, _, model = qwen2_vl_pair
    grids = [(1, 4, 6)]
    pv, g = random_image_inputs(grids, seed=9)
    prompt = np.asarray([prompt_ids(5, grids, seed=9)])
    completion = np.asarray([[11, 57, 300, 42, 7]], np.int32)
    batch = prepare_prompts(model.config, prompt, None, pv, g)
    ones = jnp.ones(completion.shape, jnp.int32)
    lp, _ = completion_logprobs(model, batch.inputs, batch.rope_deltas, completion, ones)
    full, _ = prepare_inputs(model.config, np.concatenate([prompt, completion], 1), None, pv, g)
    logits = np.asarray(model.forward(full), np.float64)[0, prompt.shape[1] - 1:-1]
    ref = logits[np.arange(5), completion[0]] - np.log(np.exp(logits).sum(-1))
    assert np.abs(np.asarray(lp[0]) - ref).max() <= 1e-5

    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
        m = nnx.merge(graphdef, params)
        return completion_logprobs(m, batch.inputs, batch.rope_deltas, completion, ones, remat=True)[0].sum()

    grads = jax.grad(loss)(params)
    for name in ("norm1_bias", "up_kernel", "down_bias"):
        gv = np.asarray(grads["visual"]["blocks"][name][...])
        assert np.isfinite(gv).all() and np.abs(gv).max() > 0, name
