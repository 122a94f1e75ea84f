"""String-level cleanup of answers before parsing: LaTeX noise, unicode, units, separators.

Everything here is a linear-time regex or replace: it runs on untrusted text before any
bound is known, so nothing here may backtrack badly or build large objects.
"""

from __future__ import annotations

import re

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": r"\times ", "\u22c5": r"\cdot ",
    "\u00b7": r"\cdot ", "\u00f7": "/", "\u03c0": r"\pi ", "\u221a": r"\sqrt", "\u221e": r"\infty ",
    "\u00b0": "°", "\u00b2": "^2", "\u00b3": "^3", "\u2264": r"\le ", "\u2265": r"\ge ",
    "\u2260": r"\ne ", "\u222a": r"\cup ", "\u2229": r"\cap ", "\uff0c": ",", "\uff1a": ":",
    "\uff08": "(", "\uff09": ")", "\u00bd": "(1/2)", "\u00bc": "(1/4)", "\u00be": "(3/4)",
    "\u2032": "'", "\u00b1": r"\pm ", "\u2213": r"\mp ", "\u2208": r"\in ", "\u2205": r"\emptyset ",
    "\u00a0": " ", "\u2009": " ",
    "\u202f": " ", "\u2248": "=",
}
_UNICODE_RE = re.compile("|".join(re.escape(k) for k in _UNICODE))

# Commands that change only typesetting; removed outright.
_NOISE_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg|displaystyle"
    r"|textstyle|scriptstyle|limits|nolimits)(?![a-zA-Z])"
    r"|\\[,;:! ]|\\quad(?![a-zA-Z])|\\qquad(?![a-zA-Z])|\\(?:hspace|vspace)\*?\{[^{}]*\}"
)
# Font wrappers whose content is kept: \mathbf{x} -> x. (\text is handled separately.)
_FONT_RE = re.compile(
    r"\\(?:mathbf|mathit|mathsf|mathtt|mathnormal|boldsymbol|bm|textbf|textit"
    r"|emph|operatorname|mathbb|mathcal|underline|overline)\s*\{([^{}]*)\}"
)
# Text-like wrappers; a unit inside one takes its exponent with it: \text{ cm}^2.
_TEXT_RE = re.compile(
    r"\\(?:text|mbox|textnormal|hbox|mathrm|textrm)\s*\{([^{}]*)\}(\s*\^\s*\{?\s*[23]\s*\}?)?"
)
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree(?![a-zA-Z])|\^\s*\{\s*°\s*\}|\^°")

_BOLD_RE = re.compile(r"(?<![\w)}])\*\*([^*]{1,200})\*\*(?![\w({])")
_MIXED_RE = re.compile(r"^([-+]?)\s*(\d+)\s+(\d+)\s*/\s*(\d+)$")

# "There are 8 apples." states 8; the lead-in is not part of the answer.
_LEAD_IN_RE = re.compile(
    r"^(?:there\s+(?:are|is|were|was)|it\s+is|it's|we\s+get|we\s+have|the\s+result\s+is)\s+(?=\S)",
    re.IGNORECASE,
)
_REPEATING_RE = re.compile(r"(\d*)\.(\d*)\\overline\s*\{(\d{1,20})\}")


def _repeating(m: re.Match) -> str:
    """0.1\\overline{6} -> (1/6): a repeating decimal as an exact fraction."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    num = int(whole + fixed + rep) - int(whole + fixed)
    den = (10 ** len(rep) - 1) * 10 ** len(fixed)
    return f"({num}/{den})"


_UNIT_WORDS = (
    "mm|cm|dm|m|km|nm|um|in|inch|inches|ft|feet|foot|yd|yard|yards|mi|mile|miles|"
    "meter|meters|metre|metres|centimeter|centimeters|millimeter|millimeters|kilometer|kilometers|"
    "g|kg|mg|gram|grams|kilogram|kilograms|lb|lbs|pound|pounds|oz|ounce|ounces|t|ton|tons|"
    "s|sec|secs|second|seconds|min|mins|minute|minutes|h|hr|hrs|hour|hours|day|days|week|weeks|"
    "month|months|year|years|ml|mL|l|L|liter|liters|litre|litres|"
    "unit|units|square units|sq units|cubic units|sq|square|cubic|dollar|dollars|cent|cents|"
    "yuan|euro|euros|rmb|km/h|kmh|mph|m/s|cm/s|kg/m\\^3|people|persons|students|items|objects|"
    "apples|times|pieces|points|balls|cars|coins|books|boxes|cubes|cm\\^2|m\\^2|km\\^2|mm\\^2|"
    "cm\\^3|m\\^3|mm\\^3|in\\^2|ft\\^2"
)
# Single letters are units only when set apart (a space or \text{}): "5 m" but not "5m".
_SHORT_UNITS = {"m", "g", "s", "h", "l", "L", "t", "in"}
_AREA = r"(?:(?:square|sq\.?|cubic)\s+)?"  # "120 square feet"
_TEXT_UNIT_RE = re.compile(r"^\s*" + _AREA + "(?:" + _UNIT_WORDS + r")\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*$")
_TRAILING_UNIT_RE = re.compile(
    r"(?<=[\d}\)\s.])\s*(?:\\,)?\s*" + _AREA
    + "(" + _UNIT_WORDS + r")(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$"
)
_THOUSANDS_RE = re.compile(r"(?<![\d.,])(\d{1,3})((?:,\d{3})+)(?![\d,]|\.\d*,)")
_THOUSANDS_SPACE_RE = re.compile(r"(?<![\d.])(\d{1,3})((?:\s\d{3})+)(?![\d.])")

# Words that are numbers. "none", "no", "null", "nan", "N/A" are not: as answers they say
# there is no value (Python's None, "none of these"), and equating them with 0 rewards them.
NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20,
}


def _replace_text(match: re.Match) -> str:
    content, power = match.group(1), match.group(2) or ""
    if _TEXT_UNIT_RE.match(content):
        return " "
    return " " + content + power + " "


def clean_latex(s: str) -> str:
    """Typesetting removed; the result keeps only what changes the value."""
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = _BOLD_RE.sub(r"\1", s)  # markdown **B**, before ** becomes a power
    s = _REPEATING_RE.sub(_repeating, s)  # before \overline is unwrapped as a font
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = s.replace("\\mathbb{R}", "(-\\infty, \\infty)").replace("\\approx", "=")
    s = s.replace("{,}", "").replace("\\%", "%").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\cfrac", "\\frac").replace("**", "^").replace("\\lvert", "|").replace("\\rvert", "|")
    s = s.replace("\\vert", "|").replace("\\mid", "|").replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    s = s.replace("\\leqslant", "\\le").replace("\\geqslant", "\\ge").replace("\\neq", "\\ne")
    s = s.replace("\\leq", "\\le").replace("\\geq", "\\ge").replace("\\langle", "(").replace("\\rangle", ")")
    s = _DEGREE_RE.sub("°", s)
    s = _NOISE_RE.sub(" ", s)
    for _ in range(3):  # nested fonts like \textbf{\text{B}}; bounded, each pass is linear
        s, n1 = _FONT_RE.subn(r"\1", s)
        s, n2 = _TEXT_RE.subn(_replace_text, s)
        if not (n1 or n2):
            break
    s = s.replace("~", " ")
    s = re.sub(r"(?<=[\d}\s])\s*(?:degrees?|deg)\b", "°", s)
    s = re.sub(r"(?<=[\d}\s])\s*percent\b", "%", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s


def strip_units(s: str) -> str:
    """Drop a trailing unit ('12 cm', '3 m^2', '5 apples'); keep the string if nothing is left."""
    m = _TRAILING_UNIT_RE.search(s)
    if not m:
        return s
    unit = m.group(1)
    head = s[: m.start()]
    if not head.strip():
        return s
    if unit in _SHORT_UNITS and s[m.start() : m.start(1)] == "":
        return s  # "5m" reads as 5*m; "5 m" reads as five metres
    # Units follow numbers; in "\pi r^2 h" the trailing h is a variable, not hours.
    letters = re.sub(r"\\[a-zA-Z]+", "", re.sub(r"^\s*[a-zA-Z]\s*=", "", head))
    if re.search(r"[a-zA-Z]", letters):
        return s
    return head.rstrip()


def fix_thousands(s: str) -> str:
    """'1,234,567' and '1 234 567' -> '1234567' (only well-formed groups of three)."""
    s = _THOUSANDS_RE.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    if re.fullmatch(r"[-+]?\d{1,3}(?:\s\d{3})+(?:\.\d+)?", s):
        s = s.replace(" ", "")
    return s


def normalize_answer(s: str) -> str:
    """Cleanup applied to both sides before structure parsing."""
    s = clean_latex(s)
    s = s.strip()
    s = re.sub(r"^(?:final\s+answer|answer)\s*[:=]\s*", "", s, flags=re.IGNORECASE)
    s = _LEAD_IN_RE.sub("", s)
    s = s.rstrip(". ").strip()
    s = strip_units(s)
    s = fix_thousands(s)
    s = _MIXED_RE.sub(r"\1(\2+\3/\4)", s)  # plain-text mixed number "2 1/2"
    low = s.lower()
    if low in NUMBER_WORDS:
        s = str(NUMBER_WORDS[low])
    return s


_PUNCT_RE = re.compile(r"[\s.,;:!?\"'`*_(){}\[\]\\/-]+")
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")


def normalize_text(s: str) -> str:
    """Case-, space-, punctuation- and article-insensitive key for short text answers."""
    s = clean_latex(s).lower()
    s = _ARTICLES_RE.sub(" ", s)
    words = [w for w in _PUNCT_RE.split(s) if w]
    words = [str(NUMBER_WORDS[w]) if w in NUMBER_WORDS else w for w in words]
    return " ".join(words)
