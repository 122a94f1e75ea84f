"""Host-side rollout plumbing: the sampler as a rollout function (params, prompts, seed) -> Rollout."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jaxr1.data.text import decode_completions
from jaxr1.parallel.distributed import to_host
from jaxr1.sampling import generate


@dataclasses.dataclass(frozen=True)
class Rollout:
    """G completions per prompt as host arrays; rows i*G .. i*G+G-1 are prompt i's (the sampler's layout)."""
    tokens: np.ndarray           # [R, Tc] int, pad after stop
    lengths: np.ndarray          # [R]
    logprobs: np.ndarray         # [R, Tc] the sampler's log-probs of its tokens
    stop_reason: np.ndarray      # [R]
    texts: list[str]             # decoded completions

    def rows(self, index: np.ndarray) -> "Rollout":
        return Rollout(self.tokens[index], self.lengths[index], self.logprobs[index], self.stop_reason[index],
                       [self.texts[i] for i in index])

    @staticmethod
    def concat(parts: Sequence["Rollout"]) -> "Rollout":
        cat = lambda k: np.concatenate([getattr(p, k) for p in parts])
        return Rollout(cat("tokens"), cat("lengths"), cat("logprobs"), cat("stop_reason"),
                       [t for p in parts for t in p.texts])


RolloutFn = Callable[..., Rollout]   # (params, PromptBatch, seed: int) -> Rollout


def sampler_rollout(learner, rl, *, tokenizer, eos_token_ids: Sequence[int], compute_dtype: str,
                    mesh=None) -> RolloutFn:
    """The sampler on the learner's live parameters (cast to the compute dtype): no weight sync. The one place
    the trainer calls `generate`."""
    def rollout(params, batch, seed: int) -> Rollout:
        policy = learner.model(params, compute_dtype)
        gen = generate(policy, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw,
                       max_new_tokens=rl.max_completion_length, temperature=rl.temperature, top_p=rl.top_p,
                       top_k=rl.top_k, num_generations=rl.num_generations, eos_token_ids=eos_token_ids, seed=seed,
                       mesh=mesh,   # rows split over data x fsdp; weights gathered once per rollout
                       compact=rl.compact_finished_rows)
        out = {k: to_host(getattr(gen, k)) for k in ("tokens", "lengths", "logprobs", "stop_reason")}
        return Rollout(**out, texts=decode_completions(tokenizer, out["tokens"], out["lengths"]))
    return rollout
