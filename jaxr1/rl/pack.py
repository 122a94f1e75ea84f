"""Completion packing: a prompt's G completions share training rows, so the step pays for their real lengths.

Trimming pads every completion of a step to its longest; with long-tailed lengths (most stop at 100-300 of
1,024, a few run long) that still pads most rows 2-4x. Packing places each prompt's completions one after
another into rows of one length (first-fit decreasing), one segment each: a segment attends to its prompt's
keys/values and its own causal prefix (TextDecoder.shared_prefix), positions restart at the prompt's end,
and the log-probs are gathered back into the [completions, Tc] layout the loss reads. A row holds the
completions of at most K prompts (K = 1 or 2, `choose_layout` picks by cost): each of its tokens reads its
own prompt's keys/values, and the row pays attention over all K prompts' (per row, K x prompt length keys).
Rows of one prompt alone fill ~78% of their slots at the realistic shape (8 completions of mean ~120 into
rows >= the longest); letting two prompts share a row fills ~90%. Row lengths and counts round to buckets
(`row_lengths`, `row_buckets`: multiples of the batch shards), so a run compiles a bounded set of shapes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxr1.flops import decoder_flops
from jaxr1.ops.attention import causal_blocks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedRows:
    tokens: jax.Array       # [R, L] int32, 0 in padding
    segments: jax.Array     # [R, L] int32: 1, 2, ... per completion in the row, 0 padding
    offsets: jax.Array      # [R, L] int32: the token's index within its completion
    row_prompts: jax.Array  # [R, K] int32: the prompts (of the micro-batch) whose keys the row reads, -1 = none
    token_prompt: jax.Array  # [R, L] int32: the prompt of each token (padding: the row's first prompt)
    source: jax.Array       # [N, Tc] int32: row * L + slot of completion n's token t (0 past its end)


def identity_packing(completions: jax.Array, mask: jax.Array, group: int) -> PackedRows:
    """One completion per row (the unpacked layout) as a PackedRows, in-graph: [N, Tc] rows of prompt n // G."""
    n, t = completions.shape
    prompt = jnp.arange(n, dtype=jnp.int32) // group
    return PackedRows(completions, mask.astype(jnp.int32), jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (n, t)),
                      prompt[:, None], jnp.broadcast_to(prompt[:, None], (n, t)),
                      jnp.arange(n * t, dtype=jnp.int32).reshape(n, t))


def first_fit(lengths: np.ndarray, capacity: int, group: int | None = None, prompts: int = 1) -> list[list[int]]:
    """Indices of `lengths` in bins of total <= capacity, first-fit decreasing (every length <= capacity).
    With `group`, index i belongs to prompt i // group and a bin holds at most `prompts` prompts' items."""
    bins, room, owners = [], [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        n, owner = int(lengths[i]), (0 if group is None else i // group)
        if n == 0:
            continue
        j = next((j for j, r in enumerate(room)
                  if r >= n and (owner in owners[j] or len(owners[j]) < prompts)), None)
        if j is None:
            bins.append([]), room.append(capacity), owners.append(set())
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= n
        owners[j].add(owner)
    return bins


def row_bins(lengths: np.ndarray, group: int, length: int, prompts: int = 1) -> list[list[int]]:
    """The packing of completions `lengths` (prompt i // group) into rows of `length`, at most `prompts`
    prompts a row, rows ordered by their first prompt (so a batch shard's rows mostly read its own prompts;
    the sort is stable, so one prompt's rows keep first-fit's order)."""
    return sorted(first_fit(lengths, length, group, prompts), key=lambda b: min(i // group for i in b))


def rows_needed(lengths: np.ndarray, group: int, length: int, prompts: int = 1) -> int:
    return len(row_bins(lengths, group, length, prompts))


ROW_MULTIPLE = 16   # XLA:GPU (jax 0.10) fails to tile the packed attention's dots at some lengths off 16
                    # ("Couldn't find output tile sizes", H100 target, rows 28 / 40 / 56; test_compile_targets)


def row_lengths(max_len: int) -> list[int]:
    """Row lengths a step may pack into: 16 x 2^k x {1, 1.25, 1.5, 1.75} (at most 1.25x apart from 64 up)
    rounded up to a multiple of ROW_MULTIPLE, up to 2 x max_len (so rounded); rows longer than any completion
    hold more of them (fewer half-empty rows per prompt)."""
    up = lambda n: -(-n // ROW_MULTIPLE) * ROW_MULTIPLE
    sizes, k = set(), 16
    while k < 2 * max_len:
        sizes.update(up(k * q // 4) for q in (4, 5, 6, 7))
        k *= 2
    return sorted(s for s in sizes | {up(2 * max_len)} if s <= up(2 * max_len))


def row_buckets(multiple: int, most: int) -> list[int]:
    """Row counts a step may use: every multiple of `multiple` (the batch shards) up to 8 of them, then
    steps of at most 1.25x, up to `most` (itself included)."""
    sizes, k = {most}, 1
    while k * multiple < most:
        sizes.add(k * multiple)
        k = k + 1 if k < 8 else -(-k * 5 // 4)
    return sorted(sizes)


def choose_layout(lengths: list[np.ndarray], group: int, longest: int, max_len: int, multiple: int, *,
                  prompt_len: int = 0, key_cost: float = 0.0, max_prompts: int = 2) -> tuple[int, int, int]:
    """(row length L, rows R per micro-batch, prompts per row K <= max_prompts) of the least cost for
    micro-batches whose completion lengths are `lengths` (one array each, 0 = no tokens to train); L >=
    longest (the step's longest completion, or its trimmed length). Cost per slot: 1 + key_cost x (K x
    prompt_len + own keys), key_cost being one attention key's FLOPs relative to a token's projections, MLP
    and lm head (jaxr1.flops.decoder_flops: "pair" / ("token" + "logit")), own keys the mean a query of an
    L-token row reads in `prefix_attention`'s causal query blocks; key_cost 0 counts slots only. R holds
    every micro-batch's packing and never exceeds one row per completion. Stateless (the same rollout packs
    the same way after a resume)."""
    most = max(len(x) for x in lengths)
    best = None
    for L in (b for b in row_lengths(max_len) if b >= longest):
        for k in range(1, max(1, max_prompts) + 1):
            need = max(max(rows_needed(x, group, L, k) for x in lengths), 1)
            rows = next((r for r in row_buckets(multiple, most) if r >= need), None)
            cost = None if rows is None else rows * L * (1 + key_cost * (k * prompt_len + own_keys(L)))
            if cost is not None and (best is None or cost < best[0]):
                best = cost, L, rows, k
    return best[1:] if best is not None else (longest, most, 1)


def own_keys(L: int) -> float:
    """Own-row keys per query of an L-token row in `prefix_attention`: each query block reads the keys up to
    its end (L (n + 1) / 2n for n equal blocks)."""
    return float(np.mean([stop for _, stop in causal_blocks(L)]))


def key_cost(text_cfg) -> float:
    """One attention key's forward FLOPs relative to a token's projections, MLP and lm head: choose_layout's
    cost weight (Qwen2.5-VL-3B: 5e-5, so a 384-token prompt adds 2% to a slot; the 61M CPU preset: 4e-4)."""
    f = decoder_flops(text_cfg)
    return f["pair"] / (f["token"] + f["logit"])


def pack(tokens: np.ndarray, lengths: np.ndarray, group: int, length: int, rows: int, prompts: int = 1
         ) -> PackedRows:
    """Host-side packing of completions tokens [N, Tc] (prompt n // group; lengths [N], 0 = none) into
    `rows` rows of `length`, at most `prompts` prompts a row (choose_layout's)."""
    n, tc = tokens.shape
    out = {k: np.zeros((rows, length), np.int32) for k in ("tokens", "segments", "offsets", "token_prompt")}
    row_prompts = np.full((rows, prompts), -1, np.int32)
    source = np.zeros((n, tc), np.int32)
    bins = row_bins(lengths, group, length, prompts)
    if len(bins) > rows:
        raise ValueError(f"completions need more than {rows} rows of {length}")
    for r, members in enumerate(bins):
        owners = sorted({c // group for c in members})
        row_prompts[r, :len(owners)] = owners
        out["token_prompt"][r] = owners[0]
        slot = 0
        for seg, c in enumerate(members, 1):
            m = int(lengths[c])
            out["tokens"][r, slot:slot + m] = tokens[c, :m]
            out["segments"][r, slot:slot + m] = seg
            out["offsets"][r, slot:slot + m] = np.arange(m)
            out["token_prompt"][r, slot:slot + m] = c // group
            source[c, :m] = r * length + slot + np.arange(m)
            slot += m
    row_prompts[len(bins):, 0] = 0   # empty rows read prompt 0 (all padding)
    return PackedRows(out["tokens"], out["segments"], out["offsets"], row_prompts, out["token_prompt"], source)
