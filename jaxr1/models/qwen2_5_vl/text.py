"""Qwen2 text decoder with M-RoPE: embed, for each layer GQA attention + SwiGLU MLP, norm, logits.

One forward serves training (no cache), prefill (write a prompt into the cache) and decode (one token per
row). Cache slots are positions in a preallocated [layers, B, S, kv_heads, head_dim] buffer; a query at slot
i sees slots j <= i whose `kv_valid` flag is set, so left padding and finished rows need no special cases.

The layer math exists once: `decoder_layer(cfg, p, x, cos, sin, attend, project)` (pre-norm attention, then
the SwiGLU MLP `mlp_out`), with the family part of attention in `project` (here `project_qkv`: biased q/k/v
projections + M-RoPE) and attention itself passed in as `attend(q, k, v) -> (o, aux)`. `TextDecoder.__call__`
passes masked attention over the (cache or in-sequence) keys; the sampler's decode step
(`jaxr1.sampling.decode`) calls `TextDecoder.layer` with shared-prefix attention over its prompt / own caches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np
from flax import nnx

from jaxr1.models.cache import KVCache
from jaxr1.models.lora import stacked_weights
from jaxr1.models.qwen2_5_vl.config import TextConfig
from jaxr1.models.qwen2_5_vl.params_init import param
from jaxr1.ops.attention import attention, prefix_attention
from jaxr1.ops.layers import activation, apply_rope, linear, rms_norm


class DecoderLayers(nnx.Module):
    def __init__(self, cfg: TextConfig, dtype, rngs: nnx.Rngs | None):
        L, D, I = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.input_norm = param(rngs, (L, D), dtype, "ones")
        self.post_attention_norm = param(rngs, (L, D), dtype, "ones")
        self.q_kernel = param(rngs, (L, D, q), dtype)
        self.q_bias = param(rngs, (L, q), dtype, "zeros")
        self.k_kernel = param(rngs, (L, D, kv), dtype)
        self.k_bias = param(rngs, (L, kv), dtype, "zeros")
        self.v_kernel = param(rngs, (L, D, kv), dtype)
        self.v_bias = param(rngs, (L, kv), dtype, "zeros")
        self.o_kernel = param(rngs, (L, q, D), dtype)
        self.gate_kernel = param(rngs, (L, D, I), dtype)
        self.up_kernel = param(rngs, (L, D, I), dtype)
        self.down_kernel = param(rngs, (L, I, D), dtype)


def mrope_cos_sin(cfg: TextConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] -> cos, sin [B, T, head_dim]; frequency i takes its position from channel
    (section index of i) % 3, per `mrope_section` (transformers' recomposition)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    channel = np.concatenate([np.full(n, i % 3) for i, n in enumerate(cfg.mrope_section)])
    pos = positions.astype(jnp.float32)[channel]                        # [hd/2, B, T]
    freqs = jnp.moveaxis(pos, 0, -1) * inv_freq                         # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def qkv_linear(cfg, p: dict, h: jax.Array):
    """h [..., D] -> q [..., H, hd], k, v [..., Hkv, hd]: h @ W (+ bias where `p` has one), from separate
    q/k/v weights or from one fused `qkv_kernel` (+ `qkv_bias`), as `jaxr1.sampling.decode.layer_params`
    builds for the decode step."""
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if "qkv_kernel" in p:
        q, k, v = jnp.split(linear(h, p["qkv_kernel"], p.get("qkv_bias")), [heads * hd, (heads + kv_heads) * hd],
                            axis=-1)
    else:
        q, k, v = (linear(h, p[f"{n}_kernel"], p.get(f"{n}_bias")) for n in "qkv")
    lead = h.shape[:-1]
    return q.reshape(*lead, heads, hd), k.reshape(*lead, kv_heads, hd), v.reshape(*lead, kv_heads, hd)


def project_qkv(cfg: TextConfig, p: dict, h: jax.Array, cos: jax.Array, sin: jax.Array):
    """The Qwen2 part of attention: biased q/k/v projections, then RoPE on q and k.
    h [..., D], cos/sin [..., hd] -> q [..., H, hd], k and v [..., Hkv, hd]."""
    q, k, v = qkv_linear(cfg, p, h)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def mlp_out(cfg, p: dict, x: jax.Array) -> jax.Array:
    """The MLP branch of a layer (post-attention RMSNorm, SwiGLU) on the residual stream x after attention;
    separate gate/up weights or one fused `gate_up_kernel`."""
    h = rms_norm(x, p["post_attention_norm"], cfg.rms_norm_eps)
    if "gate_up_kernel" in p:
        gate, up = jnp.split(h @ p["gate_up_kernel"], 2, axis=-1)
    else:
        gate, up = h @ p["gate_kernel"], h @ p["up_kernel"]
    return (activation(cfg.hidden_act)(gate) * up) @ p["down_kernel"]


def cache_attention(core, ck: jax.Array | None, cv: jax.Array | None, cache_index, dtype):
    """`attend` for the full-sequence forward (training, prefill): without a cache, `core(q, k, v) -> o` over
    the call's own keys; with one layer's cache ck/cv [B, S, Hkv, hd], first write k/v at `cache_index`,
    then attend over the cache. aux = the updated (ck, cv), or None."""
    def attend(q, k, v):
        if ck is not None:
            k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
        o = core(q, k.astype(dtype), v.astype(dtype))
        return o, ((k, v) if ck is not None else None)
    return attend


def sequence_attention(implementation: str, kv_valid: jax.Array, t: int, cache_index):
    """`core(q, k, v)` for T queries at slots cache_index.. over S key slots, causal, keys where kv_valid.
    The calls whose queries are all the keys (training, prefill: S == T at slot 0) pass segment ids (1 = real
    token, 0 = padding) + causal, no dense mask: a fused kernel (splash, cudnn) takes them, and the XLA path
    runs them in causal query blocks. Anything else (a cache longer than the call) runs the XLA path under
    the dense [B, T, S] mask."""
    if kv_valid.shape[1] == t and isinstance(cache_index, int) and cache_index == 0:
        seg = kv_valid.astype(jnp.int32)
        return lambda q, k, v: attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True,
                                         implementation=implementation)
    q_slot = cache_index + jnp.arange(t)
    kv_slot = jnp.arange(kv_valid.shape[1])
    mask = (kv_slot[None, :] <= q_slot[:, None])[None] & kv_valid[:, None, :].astype(bool)   # [B, T, S]
    return lambda q, k, v: attention(q, k, v, mask)


def decoder_layer(cfg, p: dict, x: jax.Array, cos: jax.Array, sin: jax.Array, attend, project=project_qkv):
    """THE decoder layer body (training, prefill and decode all run this). x [..., D]; cos/sin [..., hd];
    `project(cfg, p, h, cos, sin) -> q [..., H, hd], k, v [..., Hkv, hd]` is the family part;
    `attend(q, k, v) -> (o [..., H, hd] or [..., H * hd], aux)` is the caller's attention (and cache write).
    Returns (x, aux)."""
    h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
    q, k, v = project(cfg, p, h, cos, sin)
    o, aux = attend(q, k, v)
    o = checkpoint_name(o, "attention_out")   # saved without remat: see checkpoint_layer
    x = x + o.reshape(*x.shape[:-1], cfg.num_attention_heads * cfg.head_dim) @ p["o_kernel"]
    return x + mlp_out(cfg, p, x), aux


class TextDecoder(nnx.Module):
    """A family's text decoder: its stacked layer weights (`layer_weights`), q/k/v projection (`project`) and
    M-RoPE tables (`rope`) are class attributes; the forward, the cache and DeepStack are shared.
    `attention` names the kernel every full-sequence call runs (jaxr1.models.set_attention sets it)."""
    layer_weights = DecoderLayers
    project = staticmethod(project_qkv)
    rope = staticmethod(mrope_cos_sin)

    def __init__(self, cfg: TextConfig, tie_word_embeddings: bool, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.attention = "xla"
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), dtype)
        self.layers = self.layer_weights(cfg, dtype, rngs)
        self.norm = param(rngs, (cfg.hidden_size,), dtype, "ones")
        # Tied: logits use the embedding itself, never a copy.
        self.lm_head = None if tie_word_embeddings else param(rngs, (cfg.hidden_size, cfg.vocab_size), dtype)

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], input_ids, axis=0)

    def lm_head_kernel(self) -> jax.Array:
        """[D, V] output projection (the transposed embedding when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        return hidden @ self.lm_head_kernel()

    def cos_sin(self, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        """M-RoPE tables for positions [3, B, T] -> [B, T, head_dim] (this family's channel layout)."""
        return self.rope(self.cfg, positions, dtype)

    def layer(self, p: dict, x: jax.Array, cos: jax.Array, sin: jax.Array, attend):
        """The layer body with this family's q/k/v projection (see `decoder_layer`)."""
        return decoder_layer(self.cfg, p, x, cos, sin, attend, self.project)

    def stacked_layer_params(self) -> dict[str, jax.Array]:
        """Per-layer weights stacked [L, ...] by name (an adapted kernel as a LoraKernel: jaxr1.models.lora)."""
        return stacked_weights(self.layers)

    def __call__(self, embeds: jax.Array, positions: jax.Array, kv_valid: jax.Array, *,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0, remat: bool = False,
                 collect_hidden: bool = False, deepstack: tuple[jax.Array, jax.Array] | None = None):
        """embeds [B, T, D], positions [3, B, T]; kv_valid [B, S] marks usable key slots (S = T without a
        cache, else the cache length, already including this call's tokens). deepstack (Qwen3-VL) = (index
        [B, T]: row of `features` for each image-token position, -1 elsewhere; features [n, N, D]): after
        layer i < n, features[i][index] is added at those positions. Returns final-norm hidden states
        [B, T, D] and the updated cache (and, with collect_hidden, each layer's output [L, B, T, D] before
        the DeepStack add, as transformers' output_hidden_states)."""
        cfg = self.cfg
        dtype = embeds.dtype
        cos, sin = self.cos_sin(positions, dtype)
        core = sequence_attention(self.attention, kv_valid, embeds.shape[1], cache_index)
        add_deepstack = deepstack_adder(deepstack)

        def layer(x, xs):
            p, ck, cv, i = xs
            x, new_kv = self.layer(p, x, cos, sin, cache_attention(core, ck, cv, cache_index, dtype))
            return add_deepstack(x, i), (new_kv, x if collect_hidden else None)

        layer = checkpoint_layer(layer, remat)
        stacked = self.stacked_layer_params()
        idx = jnp.arange(cfg.num_hidden_layers)
        xs = (stacked, None, None, idx) if cache is None else (stacked, cache.k, cache.v, idx)
        x, (new_kv, per_layer) = jax.lax.scan(layer, embeds, xs)
        new_cache = None if cache is None else KVCache(*new_kv)
        out = rms_norm(x, self.norm[...], cfg.rms_norm_eps)
        return (out, new_cache, per_layer) if collect_hidden else (out, new_cache)

    def shared_prefix(self, prompt_embeds: jax.Array, prompt_positions: jax.Array, prompt_valid: jax.Array,
                      embeds: jax.Array, positions: jax.Array, segment_ids: jax.Array, row_prompt: jax.Array,
                      token_prompt: jax.Array, *, remat: bool = False,
                      deepstack: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
        """The forward with each prompt once (training on G completions per prompt): the prompts
        prompt_embeds [B, P, D] (positions [3, B, P], prompt_valid [B, P]) run as `__call__` runs them; rows
        embeds [R, T, D] (positions [3, R, T]) of completions, one segment each (segment_ids [R, T], 0 =
        padding; a row may pack several completions of its prompts row_prompt [R, K], -1 = none, and
        token_prompt [R, T] names each token's), attend to their prompt's
        keys/values of the same layer plus their segment's causal prefix (`ops.attention.prefix_attention`),
        so gradients reach the prompt from all its completions: the math of the [prompt | completion]
        forward repeated per completion, at one prompt's cost. deepstack as `__call__`, over the prompt
        positions. Returns final-norm hidden states (prompts [B, P, D], rows [R, T, D])."""
        cfg = self.cfg
        dtype = embeds.dtype
        cos_p, sin_p = self.cos_sin(prompt_positions, dtype)
        cos, sin = self.cos_sin(positions, dtype)
        core = sequence_attention(self.attention, prompt_valid, prompt_embeds.shape[1], 0)
        add_deepstack = deepstack_adder(deepstack)

        def layer(carry, xs):
            xp, x = carry
            p, i = xs
            xp, (pk, pv) = self.layer(p, xp, cos_p, sin_p, lambda q, k, v: (core(q, k, v), (k, v)))
            x, _ = self.layer(p, x, cos, sin, lambda q, k, v: (
                prefix_attention(q, k, v, pk, pv, prompt_valid.astype(bool), segment_ids, row_prompt,
                                 token_prompt), None))
            return (add_deepstack(xp, i), x), None

        layer = checkpoint_layer(layer, remat)
        xs = (self.stacked_layer_params(), jnp.arange(cfg.num_hidden_layers))
        (xp, x), _ = jax.lax.scan(layer, (prompt_embeds, embeds), xs)
        norm = lambda h: rms_norm(h, self.norm[...], cfg.rms_norm_eps)
        return norm(xp), norm(x)


def checkpoint_layer(layer, remat: bool):
    """remat: the backward recomputes the whole layer. Without it the layer still keeps only the outputs of
    its weight matmuls and recomputes attention's scores and softmax: saving those would stack float32
    [layers, rows, heads, T, S] tensors for the backward (about 21 GiB at Qwen2.5-VL-3B, 20 rows of 512
    completion tokens over a 384-token prompt) and, on CPU, zero-fill and copy them every step
    (scripts/bench_efficiency.py: fwd+bwd 8.1 -> 7.7 s). Attention's output is kept too (the o projection's
    weight gradient reads it; one [rows, T, H x hd] tensor a layer), so the backward recomputes the scores
    and softmax, not their product with the values."""
    if remat:
        return jax.checkpoint(layer)
    cp = jax.checkpoint_policies
    return jax.checkpoint(layer, policy=cp.save_from_both_policies(cp.dots_with_no_batch_dims_saveable,
                                                                   cp.save_only_these_names("attention_out")))


def deepstack_adder(deepstack: tuple[jax.Array, jax.Array] | None):
    """(x, layer i) -> x + features[i][index] at the image-token positions after layer i < n (Qwen3-VL's
    DeepStack, see TextDecoder.__call__); the identity without DeepStack."""
    if deepstack is None:
        return lambda x, i: x
    index, feats = deepstack
    where, index = (index >= 0)[..., None], jnp.maximum(index, 0)

    def add(x, i):
        # One scan body for all layers: layers >= n select the unchanged stream.
        f = jnp.take(feats[jnp.minimum(i, feats.shape[0] - 1)], index, axis=0)
        return jnp.where(where & (i < feats.shape[0]), x + f.astype(x.dtype), x)
    return add
