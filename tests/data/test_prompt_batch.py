"""A PromptBatch owns its rows: split / take / concat keep each row's images and its left padding."""
import numpy as np
import pytest

from jaxr1.data.processing import PromptBatch

DIM = 3   # patch_dim


def make_batch(lengths, images, t, *, seed=0, pad_id=9):
    """Rows of `lengths` tokens left padded to `t` with `pad_id`; row i has the grids images[i] (0, 1, 2 ...
    images), its patches numbered so that every patch is distinguishable."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), t), pad_id, np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = rng.integers(100, 200, n)
        mask[i, t - n:] = 1
    grids = [np.asarray(g) for row in images for g in row]
    n_patches = sum(int(np.prod(g)) for g in grids)
    pixels = (seed * 1000 + np.arange(n_patches * DIM, dtype=np.float32)).reshape(n_patches, DIM)
    return PromptBatch(ids, mask, pixels if grids else None, np.stack(grids) if grids else None,
                       [{"row": i, "seed": seed} for i in range(len(lengths))], np.arange(len(lengths)) % 3 != 2,
                       np.array([len(r) for r in images], np.int32))


IMAGES = [[], [(1, 2, 2)], [(1, 2, 4), (1, 4, 2)], [], [(1, 4, 4)], [(1, 2, 2), (1, 2, 2)]]


def assert_same(a: PromptBatch, b: PromptBatch):
    for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "valid", "image_counts"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and (x == y).all(), k
    assert a.reward_inputs == b.reward_inputs


def row_images(batch, r):
    """Row r's grids and patches, read independently of PromptBatch's own bookkeeping."""
    first = int(batch.image_counts[:r].sum())
    n = int(batch.image_counts[r])
    if not n:
        return [], np.zeros((0, DIM), np.float32)
    start = int(batch.image_grid_thw[:first].prod(-1).sum())
    g = batch.image_grid_thw[first:first + n]
    return g.tolist(), batch.pixel_values[start:start + int(g.prod(-1).sum())]


def old_select_rows(batches, picks):
    """jaxr1.rl.rollout.select_rows before PromptBatch owned its rows (the reference take/concat must match)."""
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
        examples.append(pb.reward_inputs[r])
        valid.append(pb.valid[r])
        counts.append(n)
    return PromptBatch(np.stack(ids), np.stack(mask), np.concatenate(pixels) if pixels else None,
                       np.concatenate(grids) if grids else None, examples, np.asarray(valid),
                       np.asarray(counts, np.int32))


def test_take_keeps_each_rows_images():
    batch = make_batch([3, 5, 2, 6, 4, 1], IMAGES, 8)
    rows = [5, 0, 2, 2, 4]
    out = batch.take(rows)
    assert out.input_ids.tolist() == batch.input_ids[rows].tolist()
    assert out.reward_inputs == [batch.reward_inputs[r] for r in rows]
    for i, r in enumerate(rows):
        g, px = row_images(out, i)
        g0, px0 = row_images(batch, r)
        assert g == g0 and (px == px0).all()
    text_only = batch.take([0, 3])
    assert text_only.pixel_values is None and text_only.image_grid_thw is None
    assert text_only.image_counts.tolist() == [0, 0]


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_concat_of_split_is_the_batch(n):
    batch = make_batch([3, 5, 2, 6, 4, 1], IMAGES, 8)
    parts = batch.split(n)
    assert [p.batch_size for p in parts] == [6 // n] * n
    assert_same(PromptBatch.concat(parts), batch)


def test_split_needs_equal_groups():
    with pytest.raises(ValueError, match="do not split into 4"):
        make_batch([3, 5, 2, 6, 4, 1], IMAGES, 8).split(4)


def test_concat_left_pads_to_the_widest():
    a = make_batch([2, 3], IMAGES[1:3], 4, seed=1, pad_id=7)
    b = make_batch([6, 5, 4], [IMAGES[0], IMAGES[4], IMAGES[5]], 6, seed=2, pad_id=7)
    out = PromptBatch.concat([a, b])
    assert out.input_ids.shape == (5, 6)
    assert out.input_ids[:2, :2].tolist() == [[7, 7], [7, 7]] and out.attention_mask[:2, :2].sum() == 0
    assert (out.input_ids[:2, 2:] == a.input_ids).all() and (out.input_ids[2:] == b.input_ids).all()
    # each prompt still ends in the last column, with its own tokens under mask 1
    for i, src in enumerate([a.take([0]), a.take([1]), b.take([0]), b.take([1]), b.take([2])]):
        m = out.attention_mask[i].astype(bool)
        assert out.input_ids[i][m].tolist() == src.input_ids[0][src.attention_mask[0].astype(bool)].tolist()
        assert m[-1]
    assert out.image_counts.tolist() == [1, 2, 0, 1, 2]
    for i, (src, r) in enumerate([(a, 0), (a, 1), (b, 0), (b, 1), (b, 2)]):
        g, px = row_images(out, i)
        g0, px0 = row_images(src, r)
        assert g == g0 and (px == px0).all()


def test_take_and_concat_equal_the_old_select_rows():
    a = make_batch([3, 5, 2, 6, 4, 1], IMAGES, 8, seed=1)
    b = make_batch([4, 10, 7], [IMAGES[5], IMAGES[0], IMAGES[2]], 10, seed=2, pad_id=3)
    c = make_batch([2, 2], [[], []], 2, seed=3)       # no padding, no images
    batches = [a, b, c]
    for picks in ([(1, 0), (0, 1)], [(0, 5), (2, 1), (1, 1), (0, 0), (0, 2)], [(2, 0), (2, 1)],
                  [(1, 2), (1, 0), (0, 4), (0, 3)]):
        got = PromptBatch.concat([batches[bi].take([r]) for bi, r in picks])
        assert_same(got, old_select_rows(batches, picks))


def test_interleaved_global_batch_equals_the_old_gather():
    """jaxr1.parallel.distributed.gather_prompt_batch's layout (global row i*P + p is process p's row i),
    built from every process's batch with concat + take, against the old per-row bookkeeping."""
    parts = [make_batch([3, 5, 2], IMAGES[:3], 6, seed=1, pad_id=4), make_batch([7, 1, 2], IMAGES[3:], 7, seed=2,
                                                                                 pad_id=4)]
    P, B = len(parts), 3
    got = PromptBatch.concat(parts).take([p * B + i for i in range(B) for p in range(P)])
    t = max(p.input_ids.shape[1] for p in parts)
    for i in range(B):
        for p in range(P):
            row = i * P + p
            src = parts[p]
            pad = t - src.input_ids.shape[1]
            assert got.input_ids[row].tolist() == [src.pad_id] * pad + src.input_ids[i].tolist()
            assert got.attention_mask[row].tolist() == [0] * pad + src.attention_mask[i].tolist()
            g, px = row_images(got, row)
            g0, px0 = row_images(src, i)
            assert g == g0 and (px == px0).all()
            assert got.reward_inputs[row] == src.reward_inputs[i] and got.valid[row] == src.valid[i]
