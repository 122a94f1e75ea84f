"""verify(prediction, gold): is the model's final answer the gold answer?

Pipeline: unwrap <answer>/\\boxed on both sides -> multiple choice (letters, option text)
-> normalized string match -> structure + sympy comparison -> text match for answers that
are not math. Never raises: any failure is a wrong answer with a status saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jaxr1.rewards.bounds import TooLarge
from jaxr1.rewards.choices import LETTERS, choice_letter, strip_label
from jaxr1.rewards.compare import nodes_equal
from jaxr1.rewards.extract import unwrap
from jaxr1.rewards.normalize import normalize_answer, normalize_text
from jaxr1.rewards.parse import ParseError
from jaxr1.rewards.structure import parse_answer

MAX_ANSWER_CHARS = 1_000  # an extracted answer longer than this is not a final answer
MAX_INPUT_CHARS = 4_000_000  # inputs beyond this are not even searched

OK, NO_ANSWER, PARSE_FAILURE, TOO_LONG, ERROR = "ok", "no_answer", "parse_failure", "too_long", "error"

_STATED_RE = re.compile(
    r"\b(?:is|are|equals|was|were)\s+(?:(?:about|approximately|roughly|exactly|equal\s+to)\s+)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Outcome:
    correct: bool
    status: str = OK


def _squash(s: str) -> str:
    # Spaces go, except between digits: "4 2" is not 42.
    return re.sub(r"(?<!\d)\s+|\s+(?!\d)", "", s).lower()


def _parse(s: str):
    try:
        return parse_answer(s)
    except (ParseError, TooLarge, ValueError, TypeError, ZeroDivisionError, RecursionError):
        return None


def compare_answers(pred: str, gold: str) -> Outcome:
    """Compare two already-extracted answers (no multiple-choice logic)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if g and _squash(p) == _squash(g):
        return Outcome(True)
    g_node = _parse(g)
    p_node = _parse(p) if len(p) <= MAX_ANSWER_CHARS else None
    if g_node is not None:
        if p_node is None and len(p) <= MAX_ANSWER_CHARS:
            p_node = _parse_stated_value(p)
        # A math gold needs a math prediction: text keys drop signs and brackets ("-1" vs "1-").
        if p_node is None:
            return Outcome(False, PARSE_FAILURE)
        return Outcome(nodes_equal(g_node, p_node))
    gt, pt = normalize_text(gold), normalize_text(pred)
    return Outcome(bool(gt) and gt == pt)


def _options(choices) -> list[str] | None:
    """Option texts without their labels; over-long options are left out (never matched)."""
    if not choices:
        return None
    return [strip_label(str(c)) if len(str(c)) <= MAX_ANSWER_CHARS else "" for c in list(choices)[:26]]


def _parse_stated_value(pred: str):
    """'The difference is 3' states 3: parse what follows the last 'is'/'are'/'equals'."""
    matches = list(_STATED_RE.finditer(pred))
    if not matches:
        return None
    return _parse(normalize_answer(pred[matches[-1].end() :]))


def _option_index(text: str, options: list[str]) -> int | None:
    """The one option whose text equals text (None if none or several do)."""
    hits = [i for i, opt in enumerate(options) if opt and compare_answers(text, opt).correct]
    return hits[0] if len(hits) == 1 else None


def _multiple_choice(pred: str, gold: str, options: list[str] | None) -> Outcome | None:
    """Decide letter-style answers; None when the pair is not multiple choice."""
    gold_letter = choice_letter(gold)
    if gold_letter is None and options:
        idx = _option_index(gold, options)
        gold_letter = LETTERS[idx] if idx is not None and idx < len(LETTERS) else None
        if gold_letter is None:
            return None
    if gold_letter is None:
        return None
    pred_letter = choice_letter(pred)
    if pred_letter is not None:
        return Outcome(pred_letter == gold_letter)
    if options:
        idx = _option_index(pred, options)
        if idx is not None:
            return Outcome(LETTERS[idx] == gold_letter)
        if choice_letter(gold) is not None:
            return Outcome(False)  # neither a letter nor any option's text
    return None


def check(prediction: str, gold: str, choices: list[str] | None = None) -> Outcome:
    """verify() with the reason for a failure (for reward statistics)."""
    try:
        if not isinstance(prediction, str) or not isinstance(gold, str):
            return Outcome(False, NO_ANSWER)
        if len(prediction) > MAX_INPUT_CHARS:
            return Outcome(False, TOO_LONG)
        pred = unwrap(prediction)
        gold_answer = unwrap(gold[:MAX_INPUT_CHARS])
        if not pred:
            return Outcome(False, NO_ANSWER)
        if len(pred) > MAX_ANSWER_CHARS:
            return Outcome(False, TOO_LONG)
        if len(gold_answer) > MAX_ANSWER_CHARS:  # every later step assumes short strings
            return Outcome(pred.strip() == gold_answer.strip())
        mc = _multiple_choice(pred, gold_answer, _options(choices))
        if mc is not None:
            return mc
        return compare_answers(pred, gold_answer)
    except RecursionError:
        return Outcome(False, PARSE_FAILURE)
    except Exception:  # noqa: BLE001 - untrusted input must never crash the training loop
        return Outcome(False, ERROR)


def check_choice(prediction: str, gold: str, choices: list[str] | None = None) -> Outcome | None:
    """Multiple choice only: does the prediction name the gold option? None if gold is no option."""
    try:
        pred, gold_answer = unwrap(prediction[:MAX_INPUT_CHARS]), unwrap(gold[:MAX_INPUT_CHARS])
        if not pred:
            return Outcome(False, NO_ANSWER) if choice_letter(gold_answer) else None
        if len(pred) > MAX_ANSWER_CHARS or len(gold_answer) > MAX_ANSWER_CHARS:
            return Outcome(False, TOO_LONG)
        return _multiple_choice(pred, gold_answer, _options(choices))
    except Exception:  # noqa: BLE001 - untrusted input must never crash the training loop
        return Outcome(False, ERROR)


def verify(
    prediction: str, gold: str, *, choices: list[str] | None = None, timeout_s: float | None = None
) -> bool:
    """True when prediction's final answer equals gold.

    All sizes are bounded before sympy sees them, so a call returns quickly; pass timeout_s
    to also run it in a worker process that is killed past that wall-clock time (safe from
    any thread; the reward scorer always does this).
    """
    if timeout_s is None:
        return check(prediction, gold, choices).correct
    from jaxr1.rewards.pool import run_with_timeout  # the pool imports this module

    result = run_with_timeout(check, (prediction, gold, choices), timeout_s)
    return bool(result.status == OK and result.value.correct)
