"""Decode one image field (path, bytes, {bytes, path} dict, or PIL image) into an RGB PIL image."""
from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

from jaxr1.data.errors import BAD_IMAGE, MISSING_IMAGE, BadRowError


def load_image(value: Any, base_dir: str | None) -> Image.Image:
    """Raises BadRowError (missing_image / bad_image) instead of letting one row stop a run."""
    if isinstance(value, Image.Image):
        return _rgb(value, "PIL image")
    if isinstance(value, dict):
        if value.get("bytes"):
            return _decode(value["bytes"], value.get("path") or "bytes")
        if value.get("path"):
            return load_image(value["path"], base_dir)
        if value.get("url") or value.get("image"):  # {"type": "image", "image": ...} / image_url parts
            return load_image(value.get("image") or value.get("url"), base_dir)
        raise BadRowError(MISSING_IMAGE, "image dict has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _decode(bytes(value), "bytes")
    if isinstance(value, str) and value.strip():
        return _decode_file(_resolve(value.strip(), base_dir))
    raise BadRowError(MISSING_IMAGE, f"empty or unsupported image field ({type(value).__name__})")


def _resolve(path: str, base_dir: str | None) -> str:
    if path.startswith("file://"):
        path = path[len("file://"):]
    if path.startswith(("http://", "https://", "data:")):
        raise BadRowError(MISSING_IMAGE, f"remote image {path[:80]!r} (download images first)")
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)


def _decode_file(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise BadRowError(MISSING_IMAGE, f"no image file {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadRowError(MISSING_IMAGE, f"cannot read {path}: {e}") from None
    return _decode(data, path)


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now: a truncated file fails here, inside the row, not in the processor
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadRowError(BAD_IMAGE, f"cannot decode image {what}: {type(e).__name__}: {e}") from None
    return _rgb(img, what)


def _rgb(img: Image.Image, what: str) -> Image.Image:
    try:
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as e:
        raise BadRowError(BAD_IMAGE, f"cannot convert image {what} to RGB: {e}") from None
