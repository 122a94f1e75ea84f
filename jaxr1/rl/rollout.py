"""Host-side rollout plumbing: the sampler as a rollout function (params, prompts, seed) -> Rollout, and
splitting a PromptBatch into prompt micro-batches with static-shape model inputs for the learner."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jaxr1.models.qwen2_5_vl import ModelConfig
from jaxr1.models.qwen2_5_vl.vision_index import next_bucket


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
    from jaxr1.data.text import decode_completions
    from jaxr1.parallel.distributed import to_host
    from jaxr1.sampling import generate

    def rollout(params, batch, seed: int) -> Rollout:
        policy = learner.model(params, compute_dtype)
        gen = generate(policy, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw,
                       max_new_tokens=rl.max_completion_length, temperature=rl.temperature, top_p=rl.top_p,
                       top_k=rl.top_k, num_samples=rl.num_generations, eos_token_ids=eos_token_ids, seed=seed,
                       mesh=mesh,   # rows split over data x fsdp; weights gathered once per rollout
                       compact=rl.compact_finished_rows)
        out = {k: to_host(getattr(gen, k)) for k in ("tokens", "lengths", "logprobs", "stop_reason")}
        return Rollout(**out, texts=decode_completions(tokenizer, out["tokens"], out["lengths"]))
    return rollout


def split_prompts(batch, num_chunks: int) -> list[dict]:
    """Split a PromptBatch's rows into `num_chunks` equal groups, carrying each group's images."""
    b = batch.input_ids.shape[0]
    if b % num_chunks:
        raise ValueError(f"{b} prompts do not split into {num_chunks} micro-batches")
    per = b // num_chunks
    counts = np.asarray(batch.image_counts)
    grids = batch.image_grid_thw
    patches_per_image = grids.prod(-1) if grids is not None else np.zeros(0, np.int64)
    image_start = np.concatenate([[0], np.cumsum(counts)])
    patch_start = np.concatenate([[0], np.cumsum(patches_per_image)])
    out = []
    for c in range(num_chunks):
        lo, hi = c * per, (c + 1) * per
        i0, i1 = image_start[lo], image_start[hi]
        has = i1 > i0
        out.append(dict(input_ids=batch.input_ids[lo:hi], attention_mask=batch.attention_mask[lo:hi],
                        pixel_values=batch.pixel_values[patch_start[i0]:patch_start[i1]] if has else None,
                        image_grid_thw=grids[i0:i1] if has else None))
    return out


def model_inputs(cfg: ModelConfig, chunk: dict, *, patches_per_slot: int | None = None):
    """Static-shape inputs: image slots bucketed to a power of two, patches to the configured bucket."""
    grids = chunk["image_grid_thw"]
    n_images = 0 if grids is None else len(grids)
    slots = next_bucket(max(n_images, 1), 1)
    if grids is not None and patches_per_slot is not None and grids.prod(-1).max() > patches_per_slot:
        patches_per_slot = None  # an image above the configured bound gets its own bucket
    from jaxr1.models import family_of   # each family lays out its own image inputs
    return family_of(cfg).prepare_inputs(cfg, chunk["input_ids"], chunk["attention_mask"], chunk["pixel_values"],
                                         grids, num_image_slots=slots if n_images else None,
                                         patches_per_slot=patches_per_slot)


def max_patches(image_processor) -> int | None:
    """Patches of the largest image the processor can emit (max_pixels / patch_size^2), rounded to a bucket."""
    max_pixels = getattr(image_processor, "max_pixels", None) or (getattr(image_processor, "size", None) or {}).get(
        "longest_edge")
    patch = getattr(image_processor, "patch_size", 14)
    return next_bucket(int(max_pixels) // (patch * patch), 64) if max_pixels else None


def select_rows(batches: list, picks: list[tuple[int, int]]):
    """A PromptBatch made of rows (batch index, row index) of several PromptBatches, images carried along
    (DAPO dynamic sampling refills dropped groups with groups from the next batch)."""
    from jaxr1.data.processing import PromptBatch
    t = max(batches[b].input_ids.shape[1] for b, _ in picks)
    ids, mask, grids, pixels, examples, valid, counts = [], [], [], [], [], [], []
    for b, r in picks:
        pb = batches[b]
        pad = t - pb.input_ids.shape[1]
        pad_id = pb.input_ids[r][0] if pb.attention_mask[r][0] == 0 else 0
        ids.append(np.concatenate([np.full(pad, pad_id, pb.input_ids.dtype), pb.input_ids[r]]))
        mask.append(np.concatenate([np.zeros(pad, pb.attention_mask.dtype), pb.attention_mask[r]]))
        first = int(np.sum(pb.image_counts[:r]))
        n = int(pb.image_counts[r])
        if n:
            g = pb.image_grid_thw[first:first + n]
            start = int(pb.image_grid_thw[:first].prod(-1).sum())
            grids.append(g)
            pixels.append(pb.pixel_values[start:start + int(g.prod(-1).sum())])
        examples.append(pb.examples[r])
        valid.append(pb.valid[r])
        counts.append(n)
    return PromptBatch(np.stack(ids), np.stack(mask), np.concatenate(pixels) if pixels else None,
                       np.concatenate(grids) if grids else None, examples, np.asarray(valid), np.asarray(counts, np.int32))
