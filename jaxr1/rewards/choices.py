"""Multiple-choice answers: the option letter in 'B', '(B)', 'B.', 'B. 12', 'The answer is B'."""

from __future__ import annotations

import re

from jaxr1.rewards.extract import ANSWER_SUFFIX_RE
from jaxr1.rewards.normalize import clean_latex

LETTERS = "ABCDEFGHIJ"

_PREFIX_RE = re.compile(
    r"^(?:(?:so|thus|therefore|hence)[, ]\s*)?(?:the\s+)?(?:correct\s+|final\s+|right\s+|best\s+)?"
    r"(?:answer|option|choice)(?:\s+is)?\s*(?:[:=]\s*)?(?:option\s+|choice\s+)?",
    re.IGNORECASE,
)
# The letter itself, then the end, a label mark, or a space before the option text
# ('A triangle...' is a sentence, not option A).
_LETTER_RE = re.compile(r"^(?:\(([A-Ja-j])\)|\[([A-J])\]|([A-J])(?=$|[.):：,]|\s+(?![a-z])))")
_SECOND_LETTER_RE = re.compile(r"^\s*(?:,|/|&|\bor\b|\band\b)\s*\(?[A-J]\)?(?![A-Za-z])", re.IGNORECASE)
_LABEL_RE = re.compile(r"^\s*\(?([A-Ja-j])\)?\s*[.):：]\s*")


def choice_letter(text: str) -> str | None:
    """The single option letter a text names, or None (no letter, or several: 'A or B')."""
    s = clean_latex(text).strip().strip("*").strip()
    s = _PREFIX_RE.sub("", s, count=1).strip().strip("*").strip()
    s = ANSWER_SUFFIX_RE.sub("", s).strip()  # "D is correct"
    if len(s) == 1 and s.isalpha() and s.upper() in LETTERS:
        return s.upper()
    m = _LETTER_RE.match(s)
    if m is None:
        return None
    letter = next(g for g in m.groups() if g)
    if _SECOND_LETTER_RE.match(s[m.end() :]):
        return None
    if len(set(re.findall(r"\(([A-J])\)", s))) > 1:
        return None  # an option list copied out ("(A) 5 (B) 6") names no single option
    return letter.upper()


def strip_label(option: str) -> str:
    """'B. 12' or '(B) 12' -> '12'; an option list may or may not carry its labels."""
    return _LABEL_RE.sub("", option, count=1).strip()


def letter_for_index(i: int) -> str:
    return LETTERS[i] if i < len(LETTERS) else ""
