"""Synthetic CLEVR-like scenes (flat shapes on a plain background) for counting and grounding runs.

Scene i of seed s is a pure function of (s, i), so a dataset needs no files: `synthetic:counting:N`
as data.path, or write PNGs + JSONL in the R1-V schema with write_synthetic_dataset.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from jaxr1.data.errors import DataError

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 190, 30),
          "purple": (140, 60, 180), "cyan": (30, 190, 200)}
SIZES = {"small": 12, "large": 20}   # bounding-circle radius at a 224-pixel canvas
BACKGROUND = (240, 240, 240)
COUNT_QUESTION = "How many objects are there?"
KINDS = ("counting", "grounding")
_ALIASES = {"count": "counting", "clevr_count": "counting", "clevr_counting": "counting",
            "rec": "grounding", "clevr_grounding": "grounding"}


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: float         # centre, pixels
    y: float
    r: float         # bounding-circle radius: objects' circles never touch, so shapes stay apart

    @property
    def bbox(self) -> list[float]:
        """[x1, y1, x2, y2] of the drawn shape, in pixels."""
        if self.shape == "square":
            h = self.r * 0.7
            return [self.x - h, self.y - h, self.x + h, self.y + h]
        if self.shape == "triangle":
            xs, ys = zip(*_triangle(self))
            return [min(xs), min(ys), max(xs), max(ys)]
        return [self.x - self.r, self.y - self.r, self.x + self.r, self.y + self.r]


def make_scene(seed: int, index: int, *, min_objects: int = 1, max_objects: int = 6,
               size: tuple[int, int] = (224, 224),
               distinct: bool = False) -> tuple[Image.Image, list[SceneObject]]:
    """Image and its objects; distinct=True makes every (color, shape) pair unique (for grounding)."""
    rng = np.random.default_rng([seed, index])
    width, height = size
    scale = min(size) / 224
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[SceneObject] = []
    for _ in range(200 * n):  # rejection sampling; a crowded draw ends with fewer objects, counted as drawn
        if len(objects) == n:
            break
        shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
        size_name = list(SIZES)[rng.integers(len(SIZES))]
        r = SIZES[size_name] * scale
        x, y = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
        if distinct and any(o.shape == shape and o.color == color for o in objects):
            continue
        if all(math.hypot(x - o.x, y - o.y) > r + o.r + 3 for o in objects):
            objects.append(SceneObject(shape, color, size_name, x, y, r))
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)  # no anti-aliasing: every shape is one solid colour, easy to verify
    for o in objects:
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(o.bbox, fill=fill)
        elif o.shape == "square":
            draw.rectangle(o.bbox, fill=fill)
        else:
            draw.polygon(_triangle(o), fill=fill)
    return image, objects


def synthetic_row(seed: int, index: int, kind: str = "counting", **scene_kw) -> dict:
    """One row in the R1-V schema with a PIL image; grounding asks for one object's box."""
    if kind not in KINDS:
        raise ValueError(f"synthetic kind must be one of {KINDS}, got {kind!r}")
    if kind == "counting":
        image, objects = make_scene(seed, index, **scene_kw)
        return {"image": image, "problem": COUNT_QUESTION, "solution": f"<answer> {len(objects)} </answer>",
                "task": "counting"}
    image, objects = make_scene(seed, index, distinct=True, **scene_kw)
    target = objects[int(np.random.default_rng([seed, index, 1]).integers(len(objects)))]
    problem = (f"Output the bounding box of the {target.color} {target.shape} in the image "
               f"as [x1, y1, x2, y2].")
    return {"image": image, "problem": problem, "solution": [round(v, 1) for v in target.bbox],
            "task": "grounding"}


def describe_objects(objects: list[SceneObject]) -> str:
    """'red circle, blue square': the objects in one canonical order (colour, then shape), e.g. as the
    reasoning an SFT warm start teaches before the count."""
    colors = list(COLORS)
    ordered = sorted(objects, key=lambda o: (colors.index(o.color), SHAPES.index(o.shape)))
    return ", ".join(f"{o.color} {o.shape}" for o in ordered)


def scene_objects(source_name: str, row: int, max_objects: int = 6) -> list[SceneObject]:
    """The objects of row `row` of the SyntheticSource called `source_name` (the name examples carry as
    "source"); max_objects must be the source's."""
    head, _, start = source_name.rpartition("@")
    parts = head.split(":")
    if len(parts) != 4 or parts[0] != "synthetic" or parts[1] not in KINDS:
        raise ValueError(f"not a synthetic source name: {source_name!r}")
    return make_scene(int(parts[3]), int(start) + row, max_objects=max_objects,
                      distinct=parts[1] == "grounding")[1]


def iter_synthetic(n: int, seed: int = 0, kind: str = "counting", **scene_kw) -> Iterator[dict]:
    for i in range(n):
        yield synthetic_row(seed, i, kind, **scene_kw)


class SyntheticSource:
    """A RowSource drawing scene start+i on access (data.path = "synthetic:<kind>[:<n>[:<seed>]]")."""

    def __init__(self, n: int, seed: int = 0, kind: str = "counting", start: int = 0, max_objects: int = 6):
        kind = _ALIASES.get(kind, kind)
        if kind not in KINDS:
            raise DataError(f"synthetic:{kind}: unknown kind; use one of {', '.join(KINDS)}")
        if n < 1:
            raise DataError(f"synthetic:{kind}: needs at least 1 row, got {n} (set data.num_synthetic, or the "
                            f"count in the path, synthetic:{kind}:N)")
        self.n, self.seed, self.kind, self.start, self.max_objects = n, seed, kind, start, max_objects
        self.name, self.base_dir = f"synthetic:{kind}:{n}:{seed}@{start}", None

    @classmethod
    def from_path(cls, path: str, n: int = 2048, seed: int = 0, start: int = 0,
                  max_objects: int = 6) -> "SyntheticSource":
        """Counts and seed written in the path win over the arguments (the config's defaults)."""
        parts = path.split(":")
        if not 2 <= len(parts) <= 4 or not all(p.lstrip("-").isdigit() for p in parts[2:]):
            raise DataError(f"data path {path!r}: expected synthetic:<kind>[:<n>[:<seed>]] with whole numbers")
        n = int(parts[2]) if len(parts) > 2 else n
        seed = int(parts[3]) if len(parts) > 3 else seed
        return cls(n, seed, parts[1], start, max_objects)

    def __len__(self) -> int:
        return self.n

    def get(self, index: int) -> dict:
        return synthetic_row(self.seed, self.start + index, self.kind, max_objects=self.max_objects)


def write_synthetic_dataset(out_dir: str, n: int, seed: int = 0, kind: str = "counting",
                            file_name: str = "train.jsonl", **scene_kw) -> str:
    """PNG files under out_dir/images and a JSONL of R1-V rows with relative paths; returns the JSONL path."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, file_name)
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(iter_synthetic(n, seed, kind, **scene_kw)):
            rel = os.path.join("images", f"{kind}_{seed}_{i:06d}.png")
            row.pop("image").save(os.path.join(out_dir, rel))
            f.write(json.dumps({"image": rel, **row}) + "\n")
    return path


def _triangle(o: SceneObject) -> list[tuple[float, float]]:
    angles = (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)  # equilateral, inside the bounding circle
    return [(o.x + o.r * math.cos(a), o.y + o.r * math.sin(a)) for a in angles]
