"""Greedy decoding with the Qwen3-VL TextDecoder over its KV cache equals transformers' generate(do_sample=False)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.hf_tiny import left_pad, prompt_ids
from tests.models.qwen3_vl.tiny import random_image_inputs

NEW = 6


@nnx.jit
def _prefill(model, inputs, kv_valid, cache):
    feats = None if inputs.vision is None else model.encode_images(inputs.vision)
    lm = model.language_model
    hidden, cache = lm(model.embed(inputs, feats), inputs.positions, kv_valid, cache=cache, cache_index=0,
                       deepstack=model.deepstack_inputs(inputs, feats))
    return lm.logits(hidden[:, -1]), cache


@nnx.jit
def _step(lm, token, position, kv_valid, cache, index):
    hidden, cache = lm(lm.embed_tokens(token[:, None]), jnp.broadcast_to(position[None, :, None], (3, *token.shape, 1)),
                       kv_valid, cache=cache, cache_index=index)
    return lm.logits(hidden[:, -1]), cache


def greedy(model, ids, mask, pv=None, grid=None, new=NEW):
    """Prefill the left-padded prompts into a [B, Tp + new] cache, then one token per step."""
    from jaxr1.models.qwen3_vl import prepare_inputs
    from jaxr1.models.qwen3_vl.text import KVCache
    inputs, deltas = prepare_inputs(model.config, ids, mask, pv, grid)
    b, tp = ids.shape
    kv_valid = jnp.concatenate([jnp.asarray(mask, bool), jnp.ones((b, new), bool)], axis=1)
    cache = KVCache.zeros(model.config.text, b, tp + new, model.dtype)
    logits, cache = _prefill(model, inputs, kv_valid, cache)
    tokens, all_logits = [], []
    start = mask.sum(-1) + deltas   # text position of the first new token (M-RoPE continues from the image)
    for s in range(new):
        all_logits.append(np.asarray(logits))
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        tokens.append(np.asarray(token))
        if s + 1 < new:
            logits, cache = _step(model.language_model, token, jnp.asarray(start + s, jnp.int32), kv_valid, cache,
                                  tp + s)
    return np.stack(tokens, 1), np.stack(all_logits, 1)


def hf_greedy(hf_model, ids, mask, pv=None, grid=None, new=NEW):
    import torch
    t_ids = torch.as_tensor(ids)
    kw = dict(input_ids=t_ids, attention_mask=torch.as_tensor(mask), max_new_tokens=new, min_new_tokens=new,
              do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    if pv is not None:
        kw.update(pixel_values=torch.as_tensor(pv), image_grid_thw=torch.as_tensor(grid),
                  mm_token_type_ids=(t_ids == hf_model.config.image_token_id).int())
    with torch.no_grad():
        out = hf_model.generate(**kw)
    return out.sequences[:, ids.shape[1]:].numpy(), np.stack([x.float().numpy() for x in out.logits], 1)


@pytest.mark.parametrize("case", ["text", "images"])
def test_greedy_matches_transformers_generate(hf_pair, case):
    hf_model, _, model = hf_pair
    if case == "text":
        ids, mask = left_pad([prompt_ids(12, seed=0), prompt_ids(7, seed=1)])
        pv = grid = None
    else:
        rows_grids = [[(1, 6, 8)], [], [(1, 4, 4), (1, 8, 6)]]
        ids, mask = left_pad([prompt_ids(6 + 2 * i, g, seed=i) for i, g in enumerate(rows_grids)])
        pv, grid = random_image_inputs([g for gs in rows_grids for g in gs], seed=2)
    ref_tokens, ref_logits = hf_greedy(hf_model, ids, mask, pv, grid)
    tokens, logits = greedy(model, ids, mask, pv, grid)
    diff = np.abs(ref_logits - logits).max()
    print(f"[{case}] greedy: {NEW} tokens/row, max |step logit diff| {diff:.3e}")
    assert np.array_equal(tokens, ref_tokens), (tokens, ref_tokens)
    assert diff <= 1e-4


def _case(case):
    if case == "text":
        ids, mask = left_pad([prompt_ids(12, seed=0), prompt_ids(7, seed=1)])
        return ids, mask, None, None
    rows_grids = [[(1, 6, 8)], [], [(1, 4, 4), (1, 8, 6)]]
    ids, mask = left_pad([prompt_ids(6 + 2 * i, g, seed=i) for i, g in enumerate(rows_grids)])
    pv, grid = random_image_inputs([g for gs in rows_grids for g in gs], seed=2)
    return ids, mask, pv, grid


@pytest.mark.parametrize("layer_loop", ["unroll", "scan"])
@pytest.mark.parametrize("case", ["text", "images"])
def test_sampler_generate_matches_greedy(hf_pair, case, layer_loop):
    """jaxr1.sampling.generate (prompt-shared KV, the Qwen3 layer body with fused or stacked weights, DeepStack
    in prefill, interleaved M-RoPE in decode) == transformers' greedy generate, with matching log-probs."""
    from jaxr1.sampling import generate
    hf_model, _, model = hf_pair
    ids, mask, pv, grid = _case(case)
    ref_tokens, ref_logits = hf_greedy(hf_model, ids, mask, pv, grid)
    out = generate(model, ids, mask, pv, grid, max_new_tokens=NEW, temperature=0.0, eos_token_ids=[],
                   num_generations=2, layer_loop=layer_loop)
    tokens = np.asarray(out.tokens)
    assert np.array_equal(tokens, np.repeat(ref_tokens, 2, axis=0)), (tokens, ref_tokens)
    ref_lp = np.take_along_axis(ref_logits - _logsumexp(ref_logits), ref_tokens[..., None], -1)[..., 0]
    assert np.abs(np.asarray(out.logprobs) - np.repeat(ref_lp, 2, axis=0)).max() <= 1e-4


def _logsumexp(x):
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))
