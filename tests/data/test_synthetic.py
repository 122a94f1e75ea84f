"""Synthetic scenes: deterministic per (seed, index); the answer equals the objects actually drawn."""
import json
import os

import numpy as np
from scipy import ndimage

from jaxr1.data import build_dataset, make_scene, write_synthetic_dataset
from jaxr1.data.synthetic import BACKGROUND, COLORS, COUNT_QUESTION, synthetic_row
from tests.data.conftest import config


def _components(image) -> int:
    fg = (np.asarray(image) != np.array(BACKGROUND)).any(-1)
    _, n = ndimage.label(fg, structure=np.ones((3, 3)))  # 8-connectivity: touching shapes would merge
    return n


def test_scenes_are_deterministic_per_seed_and_index():
    a, objs_a = make_scene(7, 3)
    b, objs_b = make_scene(7, 3)
    assert objs_a == objs_b and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(make_scene(7, 4)[0]))
    assert not np.array_equal(np.asarray(a), np.asarray(make_scene(8, 3)[0]))


def test_counts_match_drawn_objects():
    counts = []
    for i in range(25):
        image, objects = make_scene(0, i, max_objects=8)
        assert _components(image) == len(objects)
        pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
        assert {COLORS[o.color] for o in objects} | {BACKGROUND} == pixels  # solid colours, no blending
        counts.append(len(objects))
        row = synthetic_row(0, i, max_objects=8)
        assert row["solution"] == f"<answer> {len(objects)} </answer>" and row["problem"] == COUNT_QUESTION
    assert min(counts) == 1 and max(counts) >= 6


def test_grounding_box_covers_its_object():
    row = synthetic_row(1, 0, "grounding")
    x1, y1, x2, y2 = row["solution"]
    fg = (np.asarray(row["image"]) != np.array(BACKGROUND)).any(-1)
    labels, _ = ndimage.label(fg, structure=np.ones((3, 3)))
    inside = labels[int(y1 + 1):int(y2), int(x1 + 1):int(x2)]
    ys, xs = np.nonzero(labels == np.bincount(inside[inside > 0]).argmax())
    assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() - x2) <= 1.5 and abs(ys.min() - y1) <= 1.5


def test_written_dataset_loads_in_r1v_schema(tmp_path, processors):
    path = write_synthetic_dataset(str(tmp_path / "clevr"), 4, seed=2)
    rows = [json.loads(line) for line in open(path)]
    assert all(not os.path.isabs(r["image"]) and (tmp_path / "clevr" / r["image"]).exists() for r in rows)
    batch = next(iter(build_dataset(config(path, batch_size=4), *processors)))
    want = [str(len(make_scene(2, i)[1])) for i in range(4)]
    assert [e["answer"] for e in batch.reward_inputs] == want and batch.image_counts.tolist() == [1] * 4


def test_scene_objects_from_an_examples_source_and_row(processors):
    from jaxr1.data.synthetic import describe_objects, scene_objects
    batch = next(iter(build_dataset(config("synthetic:counting:16:5", batch_size=4, max_objects=4), *processors)))
    for ex in batch.reward_inputs:
        objects = scene_objects(ex["source"], ex["row"], max_objects=4)
        assert str(len(objects)) == ex["answer"]
        described = describe_objects(objects).split(", ")
        assert len(described) == len(objects) and sorted(described) == sorted(f"{o.color} {o.shape}" for o in objects)
    assert describe_objects(make_scene(0, 0)[1]) == describe_objects(list(reversed(make_scene(0, 0)[1])))
