"""The trainer's log-prob path (jaxr1.rl.policy.completion_logprobs) on Qwen3-VL: DeepStack over the prompt's
image positions (none over the completion). On the embedded tiny checkpoint in float32 it equals the sampler's
own log-probs of what it sampled, and the full forward pass over [prompt | completion]."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

import jaxr1.assets
from jaxr1.rl.policy import completion_logprobs
from jaxr1.sampling import generate, prepare_prompts
from tests.models.qwen3_vl.tiny import random_image_inputs

TINY = os.path.join(os.path.dirname(jaxr1.assets.__file__), "tiny_qwen3_vl")
NEW = 8


@pytest.fixture(scope="module")
def model():
    from jaxr1.models import load_hf
    return load_hf(TINY, dtype="float32")


def _prompt(cfg, text_len, grids, seed):
    """Random text with each image's <|vision_start|> <|image_pad|>*n <|vision_end|> block in the middle."""
    rng = np.random.default_rng(seed)
    merge = cfg.vision.spatial_merge_size ** 2
    images = [t for g in grids for t in [cfg.vision_start_token_id, *[cfg.image_token_id] * (int(np.prod(g)) // merge),
                                          cfg.vision_end_token_id]]
    text = list(rng.integers(10, 500, text_len))
    return text[:text_len // 2] + images + text[text_len // 2:]


def _batch(cfg):
    rows_grids = [[(1, 4, 6)], [], [(1, 4, 4), (1, 6, 4)]]
    rows = [_prompt(cfg, 5 + 2 * i, g, seed=i) for i, g in enumerate(rows_grids)]
    t = max(map(len, rows))
    ids = np.zeros((len(rows), t), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    pv, grid = random_image_inputs([g for gs in rows_grids for g in gs], seed=3)
    return ids, mask, pv, grid


def test_trainer_logprobs_equal_the_samplers(model):
    cfg = model.config
    ids, mask, pv, grid = _batch(cfg)
    g = 2
    out = generate(model, ids, mask, pv, grid, max_new_tokens=NEW, temperature=1.0, num_generations=g, seed=4,
                   eos_token_ids=[])
    tokens = np.asarray(out.tokens)
    batch = prepare_prompts(cfg, ids, mask, pv, grid)
    lp, _ = completion_logprobs(model, batch.inputs, batch.rope_deltas, tokens, jnp.ones(tokens.shape, jnp.int32))
    gap = np.abs(np.asarray(lp) - np.asarray(out.logprobs)).max()
    print(f"trainer vs sampler log-prob gap {gap:.2e}")
    assert gap < 1e-4

    # The same against the plain full forward over [prompt | completion] of one row (DeepStack included).
    from jaxr1.models.qwen3_vl import prepare_inputs
    row = 0
    valid = mask[row].astype(bool)
    full_ids = np.concatenate([ids[row][valid], tokens[row * g]])[None]
    full, _ = prepare_inputs(cfg, full_ids, None, pv[:24], grid[:1])
    logits = np.asarray(model.forward(full), np.float64)[0, valid.sum() - 1:-1]
    ref = logits[np.arange(NEW), tokens[row * g]] - np.log(np.exp(logits).sum(-1))
    assert np.abs(np.asarray(lp[row * g]) - ref).max() <= 1e-4
