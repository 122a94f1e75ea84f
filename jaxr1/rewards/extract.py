"""Find the final answer inside a model completion (or a wrapped gold answer).

Order: the last complete <answer>...</answer> block, else the last \\boxed{...}, else an
"the answer is X" ending. Only the tail of very long texts is searched: the answer is at the
end, and regexes over megabytes of untrusted output would cost more than the verification.
`stated_value` then reads an answer written as a sentence ("The state is Alabama.").
"""

from __future__ import annotations

import re

# The answer sits at the end; 64k characters is far more than any sane answer block.
MAX_SEARCH_CHARS = 65_536

_TAG_RE = re.compile(r"<(/?)answer>", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The final answer is $7$.", "Answer: (B)", "the answer is B. 12"
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is\s*:?|:|=)\s*",
    re.IGNORECASE,
)


# "D is correct", "Alabama is the answer": the value comes before the copula.
ANSWER_SUFFIX_RE = re.compile(
    r"\s+is\s+(?:the\s+)?(?:(?:correct|right|final)\s+)?(?:answer|correct|right)\W*$", re.IGNORECASE
)
# "The state is Alabama", "It's 3", "The sum equals 7": the value comes after the last one.
# "isn't" is no copula here (no space after "is"), so "It isn't Alabama" states nothing.
_COPULA_RE = re.compile(r"\b(?:is|are|was|were|equals)\s+|\b(?:it|that|this|there)['\u2019]s\s+", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?;:]\s+")
_CONNECTIVE_RE = re.compile(r"^(?:so|thus|therefore|hence|then)(?:,\s*|\s+)", re.IGNORECASE)


def stated_value(text: str) -> str | None:
    """The value a one-sentence answer states, kept whole: 'The state is Alabama.' -> 'Alabama.',
    'So Alabama is the answer' -> 'Alabama', 'It is not Alabama' -> 'not Alabama'.

    Nothing is dropped after the copula, so a negation, a second clause or a correction
    ("Alabama. Wait, no, Georgia") stays in the value and the comparison fails; the last
    copula wins, so in "Alabama is not the state; the state is Georgia" the value is Georgia.
    """
    m = ANSWER_SUFFIX_RE.search(text)
    if m is not None:
        head = _SENTENCE_END_RE.split(text[: m.start()])[-1]
        return _CONNECTIVE_RE.sub("", head.strip()).strip() or None
    last = None
    for last in _COPULA_RE.finditer(text):
        pass
    if last is None:
        return None
    return text[last.end() :].strip() or None


def _brace_matches(text: str) -> dict[int, int]:
    """Index of each '{' -> index of its '}', in one pass (escaped \\{ \\} do not count)."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (nested braces allowed).

    One pass over the text, not one scan per \\boxed: `\\boxed{` repeated 10^5 times unclosed
    must stay linear.
    """
    starts = [m.end() - 1 for m in _BOXED.finditer(text)]
    if not starts:
        return None
    matches = _brace_matches(text)
    for open_idx in reversed(starts):
        close = matches.get(open_idx)
        if close is not None:
            return text[open_idx + 1 : close]
    return None


def _last_answer_block(text: str) -> str | None:
    """Content of the last complete <answer>...</answer> block (tags found in one pass)."""
    last_open, block = None, None
    for m in _TAG_RE.finditer(text):
        if not m.group(1):
            last_open = m.end()
        elif last_open is not None:
            block = text[last_open : m.start()]
            last_open = None
    return block


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    line = rest[:2000].split("\n", 1)[0].strip()
    # A sentence after the answer ("... is 5. We are done") is not part of it; but keep
    # decimals ("is 2.5") and option labels ("is B. 12") intact.
    if not re.match(r"^\(?[A-J]\)?\.", line):
        line = re.sub(r"(?<=[^\s.])\.\s+[A-Z].*$", "", line)
    line = line.strip().rstrip(".").strip()
    line = re.sub(r"^\*\*|\*\*$", "", line).strip()
    return line or None


def extract_answer(completion: str) -> str | None:
    """The final answer in a completion, or None when there is none (or it is empty)."""
    if not isinstance(completion, str) or not completion:
        return None
    text = completion[-MAX_SEARCH_CHARS:]
    content = _last_answer_block(text)
    if content is not None:
        inner = last_boxed(content)
        if inner is not None:
            content = inner
        content = content.strip()
        return content or None
    boxed = last_boxed(text)
    if boxed is not None:
        boxed = boxed.strip()
        return boxed or None
    return _answer_is(text)


def unwrap(text: str) -> str:
    """A prediction or gold string with any answer wrapper removed (else unchanged)."""
    found = extract_answer(text)
    if found is not None:
        return found
    if "<answer>" in text.lower() or _BOXED.search(text):
        return ""  # a wrapper that holds nothing is an empty answer, not the wrapper text
    return text.strip()
