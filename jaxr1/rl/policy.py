"""Log-probs of sampled completions under the policy, from the same Flax graph the sampler uses.

A rollout row is [prompt (left padded, Tp) | completion (right padded, Tc)]. The prompt, including the vision
tower, is embedded once per prompt. With `shared_prompt` (the default) it also goes through each decoder layer
once: its G completions attend to its keys/values plus their own causal prefix (TextDecoder.shared_prefix),
and gradients reach the prompt from all G, the math of the repeated forward at 1/G of the prompt's cost.
shared_prompt=False repeats the prompt per completion and runs [prompt | completion] rows (the plain path,
for debugging). Positions continue M-RoPE after the prompt exactly as the sampler does: valid prompt length +
n + the prompt's rope delta.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxr1.models.qwen2_5_vl import ModelInputs
from jaxr1.rl.logprobs import token_logprobs


def completion_positions(prompt_mask: jax.Array, rope_deltas: jax.Array, num_completion: int) -> jax.Array:
    """[3, B, Tc] M-RoPE ids of the completion tokens of each prompt."""
    start = prompt_mask.sum(-1).astype(jnp.int32) + rope_deltas.astype(jnp.int32)
    pos = start[:, None] + jnp.arange(num_completion, dtype=jnp.int32)
    return jnp.broadcast_to(pos[None], (3, *pos.shape))


def completion_logprobs(model, prompt: ModelInputs, rope_deltas: jax.Array, completions: jax.Array,
                        completion_mask: jax.Array, *, temperature: float = 1.0, chunk_size: int = 128,
                        remat: bool = False, freeze_vision: bool = False, shared_prompt: bool = True
                        ) -> tuple[jax.Array, jax.Array]:
    """prompt: B prompts; completions/mask [B*G, Tc]. Returns (logprobs, entropy), each [B*G, Tc] float32."""
    b, tp = prompt.input_ids.shape
    g = completions.shape[0] // b
    lm = model.language_model
    image_features = None
    if prompt.vision is not None:
        image_features = model.encode_images(prompt.vision, remat=remat)
        if freeze_vision:
            image_features = jax.lax.stop_gradient(image_features)
    prompt_embeds = model.embed(prompt, image_features)
    comp_positions = completion_positions(prompt.attention_mask, rope_deltas, completions.shape[1])
    deepstack = getattr(model, "deepstack_inputs", None)
    ds = deepstack(prompt, image_features) if deepstack is not None else None
    if shared_prompt:
        hp, hc = lm.shared_prefix(prompt_embeds, prompt.positions, prompt.attention_mask,
                                  lm.embed_tokens(completions), jnp.repeat(comp_positions, g, axis=1),
                                  completion_mask, remat=remat, deepstack=ds)
        # The prompt's last slot (left padding: always real) predicts completion token 0; row slot s, token s + 1.
        hidden = jnp.concatenate([jnp.repeat(hp[:, -1:], g, axis=0), hc[:, :-1]], axis=1)
    else:
        embeds = jnp.concatenate([jnp.repeat(prompt_embeds, g, axis=0), lm.embed_tokens(completions)], axis=1)
        positions = jnp.repeat(jnp.concatenate([prompt.positions, comp_positions], axis=-1), g, axis=1)
        kv_valid = jnp.concatenate([jnp.repeat(prompt.attention_mask, g, axis=0), completion_mask], axis=1)
        extra = {}
        if ds is not None:
            index, feats = ds
            index = jnp.concatenate([jnp.repeat(index, g, axis=0), jnp.full(completions.shape, -1, index.dtype)],
                                    axis=1)
            extra["deepstack"] = (index, feats)
        hidden, _ = lm(embeds, positions, kv_valid, remat=remat, **extra)
        # The hidden state at slot s predicts the token at slot s + 1.
        hidden = hidden[:, tp - 1: tp - 1 + completions.shape[1]]
    if lm.lm_head is None:
        return token_logprobs(hidden, lm.embed[...], completions, chunk_size=chunk_size, temperature=temperature,
                              transpose_w=True)
    return token_logprobs(hidden, lm.lm_head[...], completions, chunk_size=chunk_size, temperature=temperature)
