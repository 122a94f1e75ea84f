"""Log-probs of sampled completions under the policy, from the same Flax graph the sampler uses.

A rollout row is [prompt (left padded, Tp) | completion (right padded, Tc)]. The prompt, including the vision
tower, is embedded once per prompt. With `shared_prompt` (the default) it also goes through each decoder layer
once: its G completions attend to its keys/values plus their own causal prefix (TextDecoder.shared_prefix),
and gradients reach the prompt from all G, the math of the repeated forward at 1/G of the prompt's cost.
The completions run one per row, or packed several to a row (`packed`, jaxr1.rl.pack) so the cost follows
their real lengths. shared_prompt=False repeats the prompt per completion and runs [prompt | completion]
rows (the plain path, for debugging). Positions continue M-RoPE after the prompt exactly as the sampler does:
valid prompt length + n + the prompt's rope delta.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxr1.models.inputs import ModelInputs
from jaxr1.rl.logprobs import token_logprobs
from jaxr1.rl.pack import PackedRows, identity_packing


def completion_positions(prompt_mask: jax.Array, rope_deltas: jax.Array, offsets: jax.Array,
                         token_prompt: jax.Array | None = None) -> jax.Array:
    """[3, R, T] M-RoPE ids of completion tokens at `offsets` [R, T] (index within their completion) of
    prompt token_prompt[r, t] (None: row r is prompt r)."""
    start = jnp.asarray(prompt_mask).sum(-1).astype(jnp.int32) + jnp.asarray(rope_deltas).astype(jnp.int32)
    start = start[:, None] if token_prompt is None else start[token_prompt]
    pos = start + offsets.astype(jnp.int32)
    return jnp.broadcast_to(pos[None], (3, *pos.shape))


def completion_logprobs(model, prompt: ModelInputs, rope_deltas: jax.Array, completions: jax.Array,
                        completion_mask: jax.Array, *, temperature: float = 1.0, chunk_size: int = 128,
                        remat: bool = False, freeze_vision: bool = False, shared_prompt: bool = True,
                        packed: PackedRows | None = None) -> tuple[jax.Array, jax.Array]:
    """prompt: B prompts; completions/mask [B*G, Tc]; packed: the same completions packed into rows (shared
    prompt only; None: one per row). Returns (logprobs, entropy), each [B*G, Tc] float32."""
    b, tp = prompt.input_ids.shape
    g = completions.shape[0] // b
    lm = model.language_model
    image_features = None
    if prompt.vision is not None:
        image_features = model.encode_images(prompt.vision, remat=remat)
        if freeze_vision:
            image_features = jax.lax.stop_gradient(image_features)
    prompt_embeds = model.embed(prompt, image_features)
    deepstack = getattr(model, "deepstack_inputs", None)
    ds = deepstack(prompt, image_features) if deepstack is not None else None
    head = (lambda h, ids: token_logprobs(h, lm.embed[...], ids, chunk_size=chunk_size, temperature=temperature,
                                         transpose_w=True)) if lm.lm_head is None else \
        (lambda h, ids: token_logprobs(h, lm.lm_head[...], ids, chunk_size=chunk_size, temperature=temperature))
    if shared_prompt:
        rows = identity_packing(completions, completion_mask, g) if packed is None else packed
        positions = completion_positions(prompt.attention_mask, rope_deltas, rows.offsets, rows.token_prompt)
        hp, hc = lm.shared_prefix(prompt_embeds, prompt.positions, prompt.attention_mask,
                                  lm.embed_tokens(rows.tokens), positions, rows.segments, rows.row_prompts,
                                  rows.token_prompt, remat=remat, deepstack=ds)
        # A completion's token 0 is predicted by its prompt's last slot (left padding: always real), token
        # i > 0 by the slot before it in the row.
        before = jnp.concatenate([jnp.zeros_like(hc[:, :1]), hc[:, :-1]], axis=1)
        hidden = jnp.where((rows.offsets == 0)[..., None], hp[:, -1][rows.token_prompt], before)
        logprobs, entropy = head(hidden, rows.tokens)
        return logprobs.reshape(-1)[rows.source], entropy.reshape(-1)[rows.source]
    tc = completions.shape[1]
    comp_positions = completion_positions(prompt.attention_mask, rope_deltas,
                                          jnp.broadcast_to(jnp.arange(tc), (b, tc)))
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
    return head(hidden[:, tp - 1: tp - 1 + tc], completions)
