"""The reward functions of the multimodal R1 recipes, all with one batch signature:

    fn(completions: list[str], examples: list[dict], **ctx) -> np.ndarray[float32]

ctx carries per-batch data (completion_lengths, max_completion_length) and, when the scorer
calls, a `stats` Counter where functions count parse failures and missing answers. Unknown
ctx keys are ignored. Config kwargs (e.g. iou's threshold) arrive as keyword arguments too.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from jaxr1.rewards import bbox as bbox_lib
from jaxr1.rewards import verify as verify_lib
from jaxr1.rewards.extract import extract_answer, unwrap
from jaxr1.rewards.normalize import NUMBER_WORDS, normalize_answer

# Chat-template end markers a decoder may leave in the text; they are not "after the answer".
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")
_INT_RE = re.compile(r"(?<![\d.])[-+]?\d+(?![\d.]*\d)")
# A count of nothing: "How many dogs? None." The verifier never reads "none" as 0 (it is no
# value there); a counting answer that is only this word is zero.
_ZERO_COUNT_WORDS = {"none"}


def _count(ctx: dict, key: str, n: int = 1) -> None:
    stats = ctx.get("stats")
    if isinstance(stats, Counter) or isinstance(stats, dict):
        stats[key] = stats.get(key, 0) + n


def _strip_end_markers(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for m in _END_MARKERS:
            if text.endswith(m):
                text, changed = text[: -len(m)].rstrip(), True
    return text


def is_strict_format(completion: str) -> bool:
    """<think>...</think> then <answer>...</answer> (non-empty), each once, nothing after.

    Plain str.find instead of a regex: linear on megabyte outputs, no backtracking.
    """
    text = _strip_end_markers(completion).strip()
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if any(text.count(t) != 1 for t in tags):
        return False
    pos = [text.find(t) for t in tags]
    if pos[0] != 0 or not pos[0] < pos[1] < pos[2] < pos[3]:
        return False
    between = text[pos[1] + len(tags[1]) : pos[2]]
    answer = text[pos[2] + len(tags[2]) : pos[3]]
    return not between.strip() and bool(answer.strip()) and text.endswith("</answer>")


def format_reward(completions: list[str], examples: list[dict], **ctx: Any) -> np.ndarray:
    return np.array([float(is_strict_format(c)) for c in completions], dtype=np.float32)


def _record(outcome: verify_lib.Outcome, ctx: dict) -> float:
    if outcome.status == verify_lib.PARSE_FAILURE:
        _count(ctx, "parse_failures")
    elif outcome.status in (verify_lib.NO_ANSWER, verify_lib.TOO_LONG):
        _count(ctx, "no_answer")
    elif outcome.status == verify_lib.ERROR:
        _count(ctx, "errors")
    return float(outcome.correct)


def accuracy_reward(
    completions: list[str],
    examples: list[dict],
    *,
    numeric_match: str = "exact",
    min_sig_digits: int = 3,
    **ctx: Any,
) -> np.ndarray:
    """1 when the final answer verifies against example['answer'] (options from 'choices').

    numeric_match / min_sig_digits: the verifier's numeric policy (see jaxr1.rewards.verify).
    """
    policy = (numeric_match, min_sig_digits)
    verify_lib.NumericPolicy(*policy)  # a config error fails the batch, not each item silently
    out = [
        _record(verify_lib.check(c, str(ex.get("answer", "")), ex.get("choices"), *policy), ctx)
        for c, ex in zip(completions, examples)
    ]
    return np.array(out, dtype=np.float32)


def mcq_reward(
    completions: list[str],
    examples: list[dict],
    *,
    numeric_match: str = "exact",
    min_sig_digits: int = 3,
    **ctx: Any,
) -> np.ndarray:
    """1 when the answer names the gold option (by letter or by the option's text).

    Examples whose gold is not an option (no letter, no matching choice) are scored like
    `accuracy`, so a mixed batch can use one function; numeric_match / min_sig_digits apply
    to both (option texts are matched with the verifier).
    """
    policy = (numeric_match, min_sig_digits)
    verify_lib.NumericPolicy(*policy)
    out = []
    for c, ex in zip(completions, examples):
        gold, choices = str(ex.get("answer", "")), ex.get("choices")
        outcome = verify_lib.check_choice(c, gold, choices, *policy)
        if outcome is None:
            outcome = verify_lib.check(c, gold, choices, *policy)
        out.append(_record(outcome, ctx))
    return np.array(out, dtype=np.float32)


def parse_count(text: str | None) -> int | None:
    """The integer an answer states: '3', 'three', '3 apples', 'There are 3 cars.'"""
    if not text:
        return None
    s = normalize_answer(text[:1000])
    low = s.lower().strip()
    if low in NUMBER_WORDS:
        return NUMBER_WORDS[low]
    if low in _ZERO_COUNT_WORDS:
        return 0
    ints = {int(m.group(0)) for m in _INT_RE.finditer(s[:200]) if len(m.group(0)) <= 12}
    if len(ints) == 1 and not re.search(r"\d\.\d", s):
        return ints.pop()
    words = {NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", low) if w in NUMBER_WORDS}
    if not ints and len(words) == 1:
        return words.pop()
    return None


def count_reward(completions: list[str], examples: list[dict], **ctx: Any) -> np.ndarray:
    """Integer equality of the stated count with example['answer'] (counting tasks)."""
    out = []
    for c, ex in zip(completions, examples):
        gold = parse_count(unwrap(str(ex.get("answer", ""))))
        pred_text = extract_answer(c)
        if pred_text is None:
            _count(ctx, "no_answer")
            out.append(0.0)
            continue
        pred = parse_count(pred_text)
        if pred is None:
            _count(ctx, "parse_failures")
        out.append(float(pred is not None and gold is not None and pred == gold))
    return np.array(out, dtype=np.float32)


def iou_reward(
    completions: list[str],
    examples: list[dict],
    *,
    threshold: float = 0.5,
    continuous: bool = False,
    **ctx: Any,
) -> np.ndarray:
    """1 when IoU(predicted box, gold box) >= threshold (or the IoU itself if continuous).

    The predicted box is read in the frame the prompt asked for (example['bbox_frame']),
    else in Qwen2.5-VL's resized frame when example['resized_size'] is given, and mapped
    to original-image pixels, where example['bbox'] lives.
    """
    out = []
    for c, ex in zip(completions, examples):
        answer = extract_answer(c)
        pred = bbox_lib.parse_bbox(answer)
        gold = ex.get("bbox")
        if gold is None:
            gold = bbox_lib.parse_bbox(str(ex.get("answer", "")))
        if pred is None or gold is None:
            _count(ctx, "no_answer" if answer is None else "parse_failures")
            out.append(0.0)
            continue
        frame = bbox_lib.example_frame(ex)
        box = bbox_lib.to_original(pred, frame, ex.get("image_size"), ex.get("resized_size"))
        value = bbox_lib.iou(box, [float(v) for v in gold])
        out.append(value if continuous else float(value >= threshold))
    return np.array(out, dtype=np.float32)


def overlong_reward(
    completions: list[str],
    examples: list[dict],
    *,
    completion_lengths=None,
    max_completion_length: int | None = None,
    soft_cache_length: int | None = None,
    **ctx: Any,
) -> np.ndarray:
    """DAPO's soft overlong punishment, in tokens: 0 up to L_max - L_cache, then a linear
    ramp to -1 at L_max, and -1 beyond. L_cache defaults to L_max // 4."""
    if completion_lengths is None or max_completion_length is None:
        raise ValueError("overlong needs ctx completion_lengths and max_completion_length")
    lengths = np.asarray(completion_lengths, dtype=np.float64).reshape(-1)
    if lengths.shape[0] != len(completions):
        raise ValueError(f"completion_lengths has {lengths.shape[0]} entries for {len(completions)} completions")
    l_max = float(max_completion_length)
    l_cache = float(soft_cache_length if soft_cache_length is not None else max_completion_length // 4)
    if not 0 < l_cache <= l_max:
        raise ValueError(f"soft_cache_length must be in (0, {l_max:g}], got {l_cache:g}")
    start = l_max - l_cache
    ramp = (start - lengths) / l_cache
    out = np.where(lengths <= start, 0.0, np.where(lengths <= l_max, ramp, -1.0))
    return out.astype(np.float32)
