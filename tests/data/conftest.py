"""Shared fixtures for the data tests: the embedded tiny checkpoint's tokenizer/image processor, tiny images."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxr1.assets import tiny_model_dir
from jaxr1.data import DataConfig, load_processors


@pytest.fixture(scope="session")
def processors():
    return load_processors(tiny_model_dir())


@pytest.fixture(scope="session")
def tokenizer(processors):
    return processors[0]


@pytest.fixture(scope="session")
def image_processor(processors):
    return processors[1]


def make_image(h: int = 60, w: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_image(path: str, h: int = 60, w: int = 80, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    make_image(h, w, seed).save(path)
    return path


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def config(path, **kw) -> DataConfig:
    """Small, in-order, single-pass config: tests name what they change."""
    kw = {"batch_size": 2, "shuffle": False, "num_epochs": 1, "num_threads": 0, "prefetch": 2, **kw}
    return DataConfig(path=str(path) if not isinstance(path, (list, tuple)) else tuple(map(str, path)), **kw)
