"""`generate`: the host-side entry point (tokenizer / image-processor arrays in, sampled rows out)."""
from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from jaxr1.sampling.buckets import bucket_gen_length, prepare_prompts
from jaxr1.sampling.functions import SamplingMode
from jaxr1.sampling.layout import gather_params, place_prompts
from jaxr1.sampling.sampler import DecodeSpec, SampleOutput, sample


def make_spec(cfg, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
              num_generations: int = 1, eos_token_ids: Sequence[int] | int | None = None,
              pad_token_id: int | None = None, nucleus_candidates: int = 256,
              layer_loop: str = "unroll", live_window: bool = True, min_window: int = 64,
              mesh: jax.sharding.Mesh | None = None, compact: bool = True) -> DecodeSpec:
    """The static decode configuration for these sampling settings (eos / pad default to the model config)."""
    if max_new_tokens < 1 or num_generations < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and num_generations ({num_generations}) must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    if min_window < 1 or min_window & (min_window - 1):
        raise ValueError(f"min_window must be a power of two, got {min_window}")
    if eos_token_ids is None:
        eos_token_ids = cfg.eos_token_id
    eos = tuple(int(e) for e in ([] if eos_token_ids is None else
                                 [eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids))
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    if layer_loop not in ("unroll", "scan"):
        raise ValueError(f"layer_loop must be 'unroll' or 'scan', got {layer_loop!r}")
    greedy = temperature == 0
    mode = SamplingMode(greedy=greedy, top_k=0 if greedy else int(top_k), use_top_p=not greedy and top_p < 1.0,
                        nucleus_candidates=nucleus_candidates)
    return DecodeSpec(mode, int(num_generations), bucket_gen_length(max_new_tokens), eos, int(pad), layer_loop,
                      bool(live_window), int(min_window), mesh, bool(compact))


def generate(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             num_generations: int = 1, eos_token_ids: Sequence[int] | int | None = None, seed: int = 0,
             pad_token_id: int | None = None, layer_loop: str = "unroll", live_window: bool = True,
             min_window: int = 64, mesh: jax.sharding.Mesh | None = None, dtype=None,
             compact: bool = True, num_samples: int | None = None) -> SampleOutput:
    """Sample `num_generations` continuations per prompt from a model of any family (Qwen2.5-VL, Qwen2-VL,
    Qwen3-VL); temperature=0 means greedy. Rows i*n .. i*n+n-1 are prompt i's. eos_token_ids / pad_token_id
    default to the model config's (pad falls back to 0).
    layer_loop: "unroll" (per-layer cache buffers, fastest) or "scan" (one layer body: smaller program).
    live_window: each decode step attends over the live part of the per-row cache (power-of-two segments
    from min_window up); False attends over all max_new_tokens slots every step (the old behaviour).
    mesh: a (data, fsdp, tensor) mesh (`jaxr1.parallel.make_mesh`): the B*n rows are split over data x fsdp
    (prompts too when B splits), the model's weights (as the trainer shards them, or unsharded) are cast to
    `dtype` (if given) and gathered over data x fsdp once per call; outputs come back split by row. Every
    process passes the same full prompt arrays.
    compact: between decode segments, rows that have stopped leave the batch (`jaxr1.sampling.sampler`); the
    tokens are the same either way.
    num_samples: the name shared/design.md's contract gives num_generations (G); kept so its callers work."""
    if num_samples is not None:
        num_generations = num_samples
    cfg = model.config
    spec = make_spec(cfg, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                     num_generations=num_generations, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                     layer_loop=layer_loop, live_window=live_window, min_window=min_window, mesh=mesh,
                     compact=compact)
    batch = prepare_prompts(cfg, input_ids, attention_mask, pixel_values, image_grid_thw,
                            pad_token_id=spec.pad_token_id)
    graphdef, params = nnx.split(model)
    params = gather_params(params, mesh, dtype)
    if mesh is not None:
        batch = place_prompts(batch, mesh)
    return sample(graphdef, params, batch, jax.random.key(seed), max_new_tokens=max_new_tokens,
                  temperature=max(temperature, 1e-6), top_p=top_p, spec=spec)
