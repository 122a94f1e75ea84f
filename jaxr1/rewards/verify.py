"""verify(prediction, gold): is the model's final answer the gold answer?

Pipeline: unwrap <answer>/\\boxed on both sides -> multiple choice (letters, option text)
-> normalized string match -> structure + sympy comparison -> text match for answers that
are not math, also of the value a sentence states ("The state is Alabama."; a negated
"is not Alabama" states "not Alabama"). Never raises: any failure is a wrong answer with a
status saying why. A word is never a number: "None", "N/A", "nan" never equal 0.

Numeric policy (`numeric_match`, `min_sig_digits`). Exact values compare exactly; the policy
decides only when a decimal stands for an exact value that has no finite form at its places
(1/3, pi). It must then be that value rounded to the nearest at its own places (0.66 and
3.1415926 are truncations, never matches), with enough digits: a reward that accepts short
roundings pays for wrong answers (3.1 is within rounding of pi, 3.5 of 2\\sqrt{3}).
- "exact" (default): as in math-verify (which compares floats at 6 decimal places), a
  predicted decimal needs >= 6 decimal places (3.141593 ~ pi; 4.2426 is not 3\\sqrt{2}).
  A gold decimal is the dataset's own rounding, so >= min_sig_digits significant digits
  suffice there: gold 4.2426 is matched by 3\\sqrt{2}, not only by 4.2426.
- "rounded": a predicted decimal with >= min_sig_digits significant digits matches too
  (4.24 ~ 3\\sqrt{2} at the default 3; 3.1 ~ pi only with min_sig_digits=2).
With fewer significant digits a gold decimal is read as exact (gold 3.5 is 7/2: 2\\sqrt{3}
does not match), and 0.000000 never matches 1/2004!.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jaxr1.rewards.bounds import TooLarge
from jaxr1.rewards.choices import LETTERS, choice_letter, strip_label
from jaxr1.rewards.compare import EXACT, NumericPolicy, nodes_equal
from jaxr1.rewards.extract import stated_value, unwrap
from jaxr1.rewards.normalize import normalize_answer, normalize_text
from jaxr1.rewards.parse import ParseError
from jaxr1.rewards.pool import run_with_timeout
from jaxr1.rewards.structure import parse_answer

MAX_ANSWER_CHARS = 1_000  # an extracted answer longer than this is not a final answer
MAX_INPUT_CHARS = 4_000_000  # inputs beyond this are not even searched

OK, NO_ANSWER, PARSE_FAILURE, TOO_LONG, ERROR = "ok", "no_answer", "parse_failure", "too_long", "error"

# "The area is about 4.24": the qualifier says how the number was written, not what it is.
_QUALIFIER_RE = re.compile(r"^(?:about|approximately|roughly|exactly|equal\s+to)\s+", re.IGNORECASE)


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


def compare_answers(pred: str, gold: str, policy: NumericPolicy = EXACT) -> Outcome:
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
        return Outcome(nodes_equal(g_node, p_node, policy))
    # Text: the answer as written, without its lead-in ("There is a cat"), or the value its
    # sentence states ("The state is Alabama"); the whole of one of them must be the gold.
    gt = normalize_text(gold)
    stated = stated_value(p) if len(p) <= MAX_ANSWER_CHARS else None
    return Outcome(bool(gt) and any(normalize_text(t) == gt for t in (pred, p, stated) if t))


def _options(choices) -> list[str] | None:
    """Option texts without their labels; over-long options are left out (never matched)."""
    if not choices:
        return None
    return [strip_label(str(c)) if len(str(c)) <= MAX_ANSWER_CHARS else "" for c in list(choices)[:26]]


def _parse_stated_value(pred: str):
    """'The difference is 3' states 3 (see extract.stated_value); None if nothing parses."""
    stated = stated_value(pred)
    if stated is None:
        return None
    return _parse(normalize_answer(_QUALIFIER_RE.sub("", stated)))


def _option_index(text: str, options: list[str], policy: NumericPolicy) -> int | None:
    """The one option whose text equals text (None if none or several do)."""
    hits = [i for i, opt in enumerate(options) if opt and compare_answers(text, opt, policy).correct]
    return hits[0] if len(hits) == 1 else None


def _multiple_choice(pred: str, gold: str, options: list[str] | None, policy: NumericPolicy) -> Outcome | None:
    """Decide letter-style answers; None when the pair is not multiple choice."""
    gold_letter = choice_letter(gold)
    if gold_letter is None and options:
        idx = _option_index(gold, options, policy)
        gold_letter = LETTERS[idx] if idx is not None and idx < len(LETTERS) else None
        if gold_letter is None:
            return None
    if gold_letter is None:
        return None
    pred_letter = choice_letter(pred)
    if pred_letter is not None:
        return Outcome(pred_letter == gold_letter)
    if options:
        idx = _option_index(pred, options, policy)
        if idx is not None:
            return Outcome(LETTERS[idx] == gold_letter)
        if choice_letter(gold) is not None:
            return Outcome(False)  # neither a letter nor any option's text
    return None


def check(
    prediction: str,
    gold: str,
    choices: list[str] | None = None,
    numeric_match: str = "exact",
    min_sig_digits: int = 3,
) -> Outcome:
    """verify() with the reason for a failure (for reward statistics).

    A bad policy raises ValueError (a config error); bad inputs never raise.
    """
    policy = NumericPolicy(numeric_match, min_sig_digits)
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
        mc = _multiple_choice(pred, gold_answer, _options(choices), policy)
        if mc is not None:
            return mc
        return compare_answers(pred, gold_answer, policy)
    except RecursionError:
        return Outcome(False, PARSE_FAILURE)
    except Exception:  # noqa: BLE001 - untrusted input must never crash the training loop
        return Outcome(False, ERROR)


def check_choice(
    prediction: str,
    gold: str,
    choices: list[str] | None = None,
    numeric_match: str = "exact",
    min_sig_digits: int = 3,
) -> Outcome | None:
    """Multiple choice only: does the prediction name the gold option? None if gold is no option."""
    policy = NumericPolicy(numeric_match, min_sig_digits)
    try:
        pred, gold_answer = unwrap(prediction[:MAX_INPUT_CHARS]), unwrap(gold[:MAX_INPUT_CHARS])
        if not pred:
            return Outcome(False, NO_ANSWER) if choice_letter(gold_answer) else None
        if len(pred) > MAX_ANSWER_CHARS or len(gold_answer) > MAX_ANSWER_CHARS:
            return Outcome(False, TOO_LONG)
        return _multiple_choice(pred, gold_answer, _options(choices), policy)
    except Exception:  # noqa: BLE001 - untrusted input must never crash the training loop
        return Outcome(False, ERROR)


def verify(
    prediction: str,
    gold: str,
    *,
    choices: list[str] | None = None,
    numeric_match: str = "exact",
    min_sig_digits: int = 3,
    timeout_s: float | None = None,
) -> bool:
    """True when prediction's final answer equals gold (numeric policy: module docstring).

    All sizes are bounded before sympy sees them, so a call returns quickly; pass timeout_s
    to also run it in a worker process that is killed past that wall-clock time (safe from
    any thread; the reward scorer always does this).
    """
    args = (prediction, gold, choices, numeric_match, min_sig_digits)
    if timeout_s is None:
        return check(*args).correct
    NumericPolicy(numeric_match, min_sig_digits)  # a config error raises here, not in the worker

    result = run_with_timeout(check, args, timeout_s)
    return bool(result.status == OK and result.value.correct)
