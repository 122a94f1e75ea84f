"""Completion packing: a prompt's G completions share training rows, so the step pays for their real lengths.

Trimming pads every completion of a step to its longest; with long-tailed lengths (most stop at 100-300 of
1,024, a few run long) that still pads most rows 2-4x. Packing places each prompt's completions one after
another into rows of one length (first-fit decreasing), one segment each: a segment attends to its prompt's
keys/values and its own causal prefix (TextDecoder.shared_prefix), positions restart at the prompt's end,
and the log-probs are gathered back into the [completions, Tc] layout the loss reads. A row holds one
prompt's completions only, so it reads one prompt's keys/values. Row lengths and counts round to buckets
(`row_lengths`, `row_buckets`: multiples of the batch shards), so a run compiles a bounded set of shapes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np



@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedRows:
    tokens: jax.Array       # [R, L] int32, 0 in padding
    segments: jax.Array     # [R, L] int32: 1, 2, ... per completion in the row, 0 padding
    offsets: jax.Array      # [R, L] int32: the token's index within its completion
    row_prompt: jax.Array   # [R] int32: the prompt (of the micro-batch) whose completions the row holds
    source: jax.Array       # [N, Tc] int32: row * L + slot of completion n's token t (0 past its end)


def identity_packing(completions: jax.Array, mask: jax.Array, group: int) -> PackedRows:
    """One completion per row (the unpacked layout) as a PackedRows, in-graph: [N, Tc] rows of prompt n // G."""
    n, t = completions.shape
    return PackedRows(completions, mask.astype(jnp.int32), jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (n, t)),
                      jnp.arange(n, dtype=jnp.int32) // group, jnp.arange(n * t, dtype=jnp.int32).reshape(n, t))


def first_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Indices of `lengths` in bins of total <= capacity, first-fit decreasing (every length <= capacity)."""
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        n = int(lengths[i])
        if n == 0:
            continue
        j = next((j for j, r in enumerate(room) if r >= n), None)
        if j is None:
            bins.append([]), room.append(capacity)
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= n
    return bins


def rows_needed(lengths: np.ndarray, group: int, length: int) -> int:
    return sum(len(first_fit(lengths[i:i + group], length)) for i in range(0, len(lengths), group))


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


def choose_layout(lengths: list[np.ndarray], group: int, longest: int, max_len: int, multiple: int
                  ) -> tuple[int, int]:
    """(row length L, rows R per micro-batch) with the fewest slots R x L for micro-batches whose completion
    lengths are `lengths` (one array each, 0 = no tokens to train); L >= longest (the step's longest
    completion, or its trimmed length). R holds every micro-batch's packing and never exceeds one row per
    completion. Stateless (the same rollout packs the same way after a resume)."""
    most = max(len(x) for x in lengths)
    best = None
    for L in (b for b in row_lengths(max_len) if b >= longest):
        need = max(max(rows_needed(x, group, L) for x in lengths), 1)
        rows = next((r for r in row_buckets(multiple, most) if r >= need), None)
        if rows is not None and (best is None or rows * L < best[0] * best[1]):
            best = rows, L
    rows, L = best if best is not None else (most, longest)
    return L, rows


def pack(tokens: np.ndarray, lengths: np.ndarray, group: int, length: int, rows: int) -> PackedRows:
    """Host-side packing of completions tokens [N, Tc] (prompt n // group; lengths [N], 0 = none) into
    `rows` rows of `length` (choose_layout's)."""
    n, tc = tokens.shape
    out = {k: np.zeros((rows, length), np.int32) for k in ("tokens", "segments", "offsets")}
    row_prompt = np.zeros(rows, np.int32)
    source = np.zeros((n, tc), np.int32)
    r = 0
    for p in range(0, n, group):
        for members in first_fit(lengths[p:p + group], length):
            if r >= rows:
                raise ValueError(f"completions need more than {rows} rows of {length}")
            slot = 0
            for seg, i in enumerate(members, 1):
                c, m = p + i, int(lengths[p + i])
                out["tokens"][r, slot:slot + m] = tokens[c, :m]
                out["segments"][r, slot:slot + m] = seg
                out["offsets"][r, slot:slot + m] = np.arange(m)
                source[c, :m] = r * length + slot + np.arange(m)
                slot += m
            row_prompt[r] = p // group
            r += 1
    return PackedRows(out["tokens"], out["segments"], out["offsets"], row_prompt, source)
