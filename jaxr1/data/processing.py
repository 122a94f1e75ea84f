"""Row -> model-ready prompt (token ids with <|image_pad|> expanded, pixel patches, grids), and batch collation.

Matches Qwen2_5_VLProcessor: each <|image_pad|> of the templated text becomes grid.prod() // merge_size**2
copies, and pixel_values of a batch are the per-image patches concatenated in row-major order.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Sequence

import numpy as np

from jaxr1.data.errors import IMAGE_MISMATCH, TOO_LONG, BadRow, BadRowError
from jaxr1.data.images import load_image
from jaxr1.data.prompts import build_messages
from jaxr1.data.schemas import parse_row
from jaxr1.data.sources import RawRow

IMAGE_PAD = "<|image_pad|>"

try:  # transformers 5.x keeps the torchvision-free copy here
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:  # transformers 4.x
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize


@dataclasses.dataclass
class Example:
    input_ids: np.ndarray                 # [L] int32, no padding
    pixel_values: np.ndarray | None       # [P, patch_dim] float32, this prompt's images in order
    image_grid_thw: np.ndarray | None     # [n_images, 3]
    reward: dict                          # the reward example (see make_reward_example)
    messages: list[dict]


@dataclasses.dataclass
class PromptBatch:
    input_ids: np.ndarray                 # [B, T] int32, left-padded with the tokenizer's pad id
    attention_mask: np.ndarray            # [B, T] int32
    pixel_values: np.ndarray | None       # [N, patch_dim] float32, all images of the batch, row-major
    image_grid_thw: np.ndarray | None     # [n_images, 3]
    reward_inputs: list[dict]             # what the reward functions read per row: answer, choices, source, ...
    valid: np.ndarray                     # [B] bool; False marks filler rows that keep B fixed at the end
    image_counts: np.ndarray              # [B] int32 images per row (to split pixel_values per prompt)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def pad_id(self) -> int:
        """The id of the first padded slot (row-major), 0 when no row is padded."""
        pad = ~self.attention_mask.astype(bool)
        return int(self.input_ids[pad][0]) if pad.any() else 0

    def take(self, rows: Sequence[int]) -> "PromptBatch":
        """These rows, in this order, each with its own images (pixel_values rows, grids, count)."""
        rows = [int(r) for r in rows]
        counts = np.asarray(self.image_counts)
        first = np.concatenate([[0], np.cumsum(counts)])        # row -> its first image
        grids, pixels = [], []
        if self.image_grid_thw is not None:
            patch = np.concatenate([[0], np.cumsum(self.image_grid_thw.prod(-1))])   # image -> its first patch
            for r in rows:
                if counts[r]:
                    grids.append(self.image_grid_thw[first[r]:first[r + 1]])
                    pixels.append(self.pixel_values[patch[first[r]]:patch[first[r + 1]]])
        return PromptBatch(self.input_ids[rows], self.attention_mask[rows],
                           np.concatenate(pixels) if pixels else None, np.concatenate(grids) if grids else None,
                           [self.reward_inputs[r] for r in rows], np.asarray(self.valid)[rows], counts[rows].astype(np.int32))

    def split(self, n: int) -> list["PromptBatch"]:
        """`n` equal groups of consecutive rows (prompt micro-batches)."""
        if self.batch_size % n:
            raise ValueError(f"{self.batch_size} prompts do not split into {n} micro-batches")
        per = self.batch_size // n
        return [self.take(range(c * per, (c + 1) * per)) for c in range(n)]

    @staticmethod
    def concat(parts: Sequence["PromptBatch"]) -> "PromptBatch":
        """The rows of `parts` in order; shorter prompts are left padded (each part's own pad id, mask 0) to the
        widest part, so every prompt still ends where generation starts."""
        t = max(p.input_ids.shape[1] for p in parts)
        left = lambda x, fill: np.pad(x, ((0, 0), (t - x.shape[1], 0)), constant_values=fill)
        with_images = [p for p in parts if p.image_grid_thw is not None and len(p.image_grid_thw)]
        return PromptBatch(
            np.concatenate([left(p.input_ids, p.pad_id) for p in parts]),
            np.concatenate([left(p.attention_mask, 0) for p in parts]),
            np.concatenate([p.pixel_values for p in with_images]) if with_images else None,
            np.concatenate([p.image_grid_thw for p in with_images]) if with_images else None,
            [e for p in parts for e in p.reward_inputs], np.concatenate([np.asarray(p.valid) for p in parts]),
            np.concatenate([np.asarray(p.image_counts) for p in parts]))


def load_processors(model_dir: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """Tokenizer and image processor of a checkpoint dir (not AutoProcessor: it needs torchvision)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    kw = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    return AutoTokenizer.from_pretrained(model_dir), AutoImageProcessor.from_pretrained(model_dir, **kw)


def pixel_bounds(image_processor: Any) -> tuple[int, int]:
    size = getattr(image_processor, "size", None) or {}
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    lo = getattr(image_processor, "min_pixels", None) or get("shortest_edge") or get("min_pixels")
    hi = getattr(image_processor, "max_pixels", None) or get("longest_edge") or get("max_pixels")
    return int(lo), int(hi)


class Preprocessor:
    """RawRow -> Example, or a BadRow saying why not. Runs in grain's map step (threads or processes)."""

    def __init__(self, tokenizer: Any, image_processor: Any, *, schema: str = "auto",
                 system_prompt: str | None = None, question_template: str = "{question}",
                 append_choices: bool = True, task: str | None = None, max_prompt_length: int = 1024,
                 min_pixels: int | None = None, max_pixels: int | None = None):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.schema, self.system_prompt, self.question_template = schema, system_prompt, question_template
        self.append_choices, self.task, self.max_prompt_length = append_choices, task, max_prompt_length
        lo, hi = pixel_bounds(image_processor)
        self.min_pixels, self.max_pixels = min_pixels or lo, max_pixels or hi
        # Only pass `size` when overriding, so the processor's own config stays the single source otherwise.
        overridden = min_pixels is not None or max_pixels is not None
        size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        self._size_kw = {"size": size} if overridden else {}
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for grain worker processes
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, raw: RawRow) -> Example | BadRow:
        try:
            return self.process(raw)
        except BadRowError as e:
            return BadRow(e.reason, str(e), raw.source, raw.row)

    def process(self, raw: RawRow) -> Example:
        if raw.data is None:
            raise BadRowError("unreadable_row", raw.error or "unreadable row")
        parsed = parse_row(raw.data, self.schema)
        images = [load_image(ref, raw.base_dir) for ref in parsed.images]
        messages = build_messages(parsed, self.system_prompt, self.question_template, self.append_choices)
        with self._lock:  # HF tokenizers are not safe to call from several threads at once
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            text_len = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if text.count(IMAGE_PAD) != len(images):
            raise BadRowError(IMAGE_MISMATCH,
                              f"{text.count(IMAGE_PAD)} image slots in the prompt, {len(images)} images")
        # Check the length from the resize arithmetic first: patchifying a huge image to then drop it is waste.
        predicted = [self._grid(img) for img in images]
        n_tokens = text_len + sum(int(np.prod(g)) // self.merge_size**2 - 1 for g in predicted)
        if n_tokens > self.max_prompt_length:
            raise BadRowError(TOO_LONG, f"prompt has {n_tokens} tokens > max_prompt_length "
                                        f"{self.max_prompt_length}")
        pixel_values = grid = None
        if images:
            out = self.image_processor(images=images, return_tensors="np", **self._size_kw)
            pixel_values = np.asarray(out["pixel_values"], np.float32)
            grid = np.asarray(out["image_grid_thw"])
            text = expand_image_pads(text, grid, self.merge_size)
        with self._lock:
            ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
        if len(ids) > self.max_prompt_length:
            raise BadRowError(TOO_LONG, f"prompt has {len(ids)} tokens > max_prompt_length "
                                        f"{self.max_prompt_length}")
        reward = make_reward_example(parsed, raw, images, grid, self.patch_size, self.task)
        return Example(ids, pixel_values, grid, reward, messages)

    def _grid(self, img) -> tuple[int, int, int]:
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(img.height, img.width, factor=factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels)
        return 1, h // self.patch_size, w // self.patch_size


def expand_image_pads(text: str, image_grid_thw: np.ndarray, merge_size: int) -> str:
    """Each <|image_pad|>, in order, becomes grid.prod() // merge_size**2 copies (Qwen2_5_VLProcessor)."""
    pieces = text.split(IMAGE_PAD)
    if len(pieces) - 1 != len(image_grid_thw):
        raise BadRowError(IMAGE_MISMATCH, f"{len(pieces) - 1} image slots, {len(image_grid_thw)} images")
    out = [pieces[0]]
    for g, piece in zip(image_grid_thw, pieces[1:]):
        out.append(IMAGE_PAD * (int(np.prod(g)) // merge_size**2))
        out.append(piece)
    return "".join(out)


def make_reward_example(parsed, raw: RawRow, images: list, grid: np.ndarray | None, patch_size: int,
                        default_task: str | None) -> dict:
    """The dict the reward functions read; key names are a contract with jaxr1.rewards."""
    ex = {"answer": parsed.answer, "choices": parsed.choices, "task": parsed.task or default_task,
          "problem": parsed.problem, "source": raw.source, "row": raw.row}
    if parsed.bbox is not None:
        ex["bbox"] = parsed.bbox
        if images:  # the box is in the first image's pixels; Qwen answers in its resized frame
            ex["image_size"] = [images[0].height, images[0].width]
            ex["resized_size"] = [int(grid[0][1]) * patch_size, int(grid[0][2]) * patch_size]
    return ex


def bucket_length(n: int, pad_to: str = "multiple", multiple: int = 64, max_length: int | None = None) -> int:
    """Padded length for a longest prompt of n tokens: few distinct shapes, so few recompilations."""
    if pad_to == "max":
        if max_length is None:
            raise ValueError("pad_to='max' needs max_length")
        n = max(n, max_length)
    if pad_to == "pow2":
        return max(multiple, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return max(multiple, -(-n // multiple) * multiple)


def collate(examples: Sequence[Example], *, pad_id: int, batch_size: int | None = None,
            pad_to: str = "multiple", multiple: int = 64, max_length: int | None = None) -> PromptBatch:
    """Left-pad to a bucketed length; fill up to batch_size with copies of the last row marked invalid."""
    if not examples:
        raise ValueError("collate needs at least one example")
    batch_size = batch_size or len(examples)
    rows = list(examples) + [examples[-1]] * (batch_size - len(examples))
    valid = np.arange(batch_size) < len(examples)
    t = bucket_length(max(len(e.input_ids) for e in rows), pad_to, multiple, max_length)
    input_ids = np.full((batch_size, t), pad_id, np.int32)
    mask = np.zeros((batch_size, t), np.int32)
    for i, e in enumerate(rows):
        n = len(e.input_ids)
        input_ids[i, t - n:] = e.input_ids  # left padding: every prompt ends where generation starts
        mask[i, t - n:] = 1
    with_images = [e for e in rows if e.image_grid_thw is not None and len(e.image_grid_thw)]
    pixel_values = np.concatenate([e.pixel_values for e in with_images]) if with_images else None
    grid = np.concatenate([e.image_grid_thw for e in with_images]) if with_images else None
    counts = np.array([0 if e.image_grid_thw is None else len(e.image_grid_thw) for e in rows], np.int32)
    return PromptBatch(input_ids, mask, pixel_values, grid, [dict(e.reward) for e in rows], valid, counts)
