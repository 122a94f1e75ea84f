"""Row schemas -> one ParsedRow: chat turns with image slots, raw image refs, gold answer, choices, task.

  r1v:   {image|images, problem, solution}        R1-V, open-r1-multimodal, GEOQA_R1V ("<answer> 3 </answer>")
  swift: {messages, images, solution}             ms-swift; "<image>" placeholders in message text
  lmmr1: {message: JSON string, answer}           LMM-R1; OpenAI-style content parts carrying the images
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any

from jaxr1.data.errors import IMAGE_MISMATCH, MISSING_ANSWER, MISSING_QUESTION, UNREADABLE, BadRowError

IMAGE_PLACEHOLDER = "<image>"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_QUESTION_KEYS = ("problem", "question", "query", "prompt")
_ANSWER_KEYS = ("solution", "answer", "ground_truth", "gt_answer", "label")
_IMAGE_KEYS = ("image", "images", "image_path", "image_paths", "img")
_TASK_KEYS = ("task", "problem_type", "question_type", "accu_reward_method")
_GROUNDING_TASKS = ("grounding", "rec", "iou", "bbox", "detection")


@dataclasses.dataclass
class ParsedRow:
    turns: list[dict]           # {"role", "content": [{"type": "image"} | {"type": "text", "text"}]}
    images: list[Any]           # raw image refs, in the order of the image parts
    problem: str                # the question as written (placeholders removed), for rewards and logs
    answer: str                 # gold answer; for grounding the box as "[x1, y1, x2, y2]"
    choices: list[str] | None
    task: str | None
    bbox: list[float] | None    # grounding gold box in original-image pixels


def detect_schema(row: dict) -> str:
    if "message" in row and "messages" not in row:
        return "lmmr1"
    if isinstance(row.get("messages"), list):
        return "swift"
    return "r1v"


def parse_row(row: dict, schema: str = "auto") -> ParsedRow:
    chosen = detect_schema(row) if schema == "auto" else schema
    try:
        turns, images, fallback_answer = {"r1v": _r1v, "swift": _swift, "lmmr1": _lmmr1}[chosen](row)
    except BadRowError as e:
        if e.reason == MISSING_QUESTION:   # say what the row holds and which schema reads it
            raise BadRowError(MISSING_QUESTION, f"{e}; {_keys_hint(row, schema)}") from None
        raise
    users = [t for t in turns if t["role"] == "user"]
    problem = "".join(p["text"] for p in users[-1]["content"] if p["type"] == "text").strip() if users else ""
    if not problem and not images:
        raise BadRowError(MISSING_QUESTION, "no question text")
    task = next((row[k] for k in _TASK_KEYS if isinstance(row.get(k), str) and row[k]), None)
    gold = _first(row, _ANSWER_KEYS, fallback_answer)
    bbox = _bbox(row.get("bbox", gold), grounding=task in _GROUNDING_TASKS or "bbox" in row)
    if bbox is not None:
        answer, task = json.dumps(bbox), task or "grounding"
    else:
        answer = _answer_text(gold)
    if answer is None:
        raise BadRowError(MISSING_ANSWER, "no answer / solution")
    return ParsedRow(turns, images, problem, answer, _choices(row.get("choices", row.get("options"))), task, bbox)


def _keys_hint(row: dict, schema: str) -> str:
    keys = ", ".join(sorted(map(str, row))) or "none"
    readers = [name for name, key in (("swift", "messages"), ("lmmr1", "message")) if key in row]
    readers += ["r1v"] if any(k in row for k in _QUESTION_KEYS) else []
    if readers and schema not in readers:
        return f"the row has keys [{keys}], which data.schema={' or '.join(readers)} (or auto) reads"
    return f"the row has keys [{keys}]; data.schema={schema} reads {_SCHEMA_KEYS[schema]}"


_SCHEMA_KEYS = {"auto": "problem/question (r1v), messages (swift) or message (lmmr1)",
                "r1v": "one of " + "/".join(_QUESTION_KEYS), "swift": "messages", "lmmr1": "message"}


def _r1v(row: dict) -> tuple[list[dict], list[Any], Any]:
    question = _first(row, _QUESTION_KEYS, None)
    if not isinstance(question, str) or not question.strip():
        raise BadRowError(MISSING_QUESTION, f"no question (looked for {', '.join(_QUESTION_KEYS)})")
    images = _image_list(_first(row, _IMAGE_KEYS, None))
    return [{"role": "user", "content": _split_placeholders(question, len(images))}], images, None


def _swift(row: dict) -> tuple[list[dict], list[Any], Any]:
    turns = [{"role": m.get("role"), "text": m.get("content")} for m in row["messages"] if isinstance(m, dict)]
    if any(not isinstance(t["role"], str) or not isinstance(t["text"], str) for t in turns):
        raise BadRowError(UNREADABLE, "messages must be {role, content: str} objects")
    answer = None
    while turns and turns[-1]["role"] == "assistant":  # the reference reply, not part of the prompt
        answer = turns.pop()["text"]
    if not any(t["role"] == "user" for t in turns):
        raise BadRowError(MISSING_QUESTION, "messages hold no user turn")
    images = _image_list(row.get("images", row.get("image")))
    n_slots = sum(t["text"].count(IMAGE_PLACEHOLDER) for t in turns)
    if n_slots == 0 and images:  # no placeholders: images go first in the first user turn, as in ms-swift
        first = next(t for t in turns if t["role"] == "user")
        first["text"] = IMAGE_PLACEHOLDER * len(images) + first["text"]
    elif n_slots != len(images):
        raise BadRowError(IMAGE_MISMATCH, f"{n_slots} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
    out = []
    for t in turns:
        content = _split_placeholders(t["text"], t["text"].count(IMAGE_PLACEHOLDER))
        out.append({"role": t["role"], "content": content})
    return out, images, answer


def _lmmr1(row: dict) -> tuple[list[dict], list[Any], Any]:
    messages = row["message"]
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as e:
            raise BadRowError(UNREADABLE, f"'message' is not valid JSON: {e}") from None
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        raise BadRowError(UNREADABLE, "'message' must be a list of chat messages")
    turns, images, answer = [], [], None
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRowError(UNREADABLE, "each message needs a role")
        parts = m.get("content")
        parts = [{"type": "text", "text": parts}] if isinstance(parts, str) else parts
        if not isinstance(parts, list):
            raise BadRowError(UNREADABLE, "message content must be a string or a list of parts")
        content = []
        for p in parts:
            if not isinstance(p, dict):
                raise BadRowError(UNREADABLE, "content parts must be objects")
            kind = p.get("type") or ("image" if "image" in p or "image_url" in p else "text")
            if kind in ("image", "image_url"):
                ref = p.get("image", p.get("image_url"))
                images.append(ref.get("url") if isinstance(ref, dict) and "url" in ref else ref)
                content.append({"type": "image"})
            elif isinstance(p.get("text"), str):
                content.append({"type": "text", "text": p["text"]})
        turns.append({"role": m["role"], "content": content})
    while turns and turns[-1]["role"] == "assistant":
        last = turns.pop()
        answer = "".join(p.get("text", "") for p in last["content"])
    return turns, images, answer


def _split_placeholders(text: str, n_images: int) -> list[dict]:
    """Text with <image> slots -> content parts; with no slots the images lead, as in R1-V."""
    pieces = text.split(IMAGE_PLACEHOLDER)
    if len(pieces) == 1:
        return [{"type": "image"}] * n_images + [{"type": "text", "text": text.strip()}]
    if len(pieces) - 1 != n_images:
        raise BadRowError(IMAGE_MISMATCH,
                          f"{len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders but {n_images} images")
    parts: list[dict] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image"})
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts


def _image_list(value: Any) -> list[Any]:
    """None / "" / [] mean a text-only row; a missing *file* is a bad row, found when loading."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None]
    return [value]


def _first(row: dict, keys: tuple[str, ...], default: Any) -> Any:
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return default


def _answer_text(gold: Any) -> str | None:
    if gold is None or isinstance(gold, (dict, bool)):
        return None
    if isinstance(gold, (list, tuple)):
        gold = ", ".join(str(g) for g in gold)
    text = str(gold)
    m = _ANSWER_TAG.search(text)  # R1-V golds come as "<answer> 3 </answer>"
    text = (m.group(1) if m else text).strip()
    return text or None


def _bbox(value: Any, grounding: bool) -> list[float] | None:
    """A real list of 4 numbers is a box; a string only when the row says it is a grounding task."""
    if isinstance(value, str) and grounding:
        m = _ANSWER_TAG.search(value)
        try:
            value = json.loads((m.group(1) if m else value).strip())
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    if (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return [float(v) for v in value]
    return None


def _choices(value: Any) -> list[str] | None:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # choices saved as the repr of a list/dict
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=str)] or None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value] or None
    return None
