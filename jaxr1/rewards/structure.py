"""Split a normalized answer into its shape: scalar, equation, interval, tuple, set or list.

The scalar parser (`parse.py`) sees one expression at a time; this module decides what the
commas, brackets, `=`, `\\cup` and inequality signs around those expressions mean.
Any failure raises ParseError and the caller falls back to comparing text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy

from jaxr1.rewards.parse import ParseError, parse_expr

MAX_ITEMS = 64


@dataclass(frozen=True)
class Scalar:
    expr: sympy.Expr
    percent: bool = False  # written with %: the value is the number before the sign
    degree: bool = False  # written with a degree sign: the value is in degrees
    decimal: tuple[int, int] | None = None  # (places, significant digits) of a bare decimal


@dataclass(frozen=True)
class Equation:
    lhs: sympy.Expr | None  # None: a label ("Area = 12", "f(x) = ...", "(a, b) = ...")
    rhs: "Node"  # a Scalar, except after a label: (a, b) = (2, 3)


@dataclass(frozen=True)
class Relation:  # an inequality we could not turn into an interval
    parts: tuple[sympy.Expr, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Seq:
    kind: str  # "list" (bare commas/or), "set" (\{\}), "tuple", "interval", "union"
    items: tuple
    brackets: str = ""  # e.g. "[)" for tuples and intervals


Node = Scalar | Equation | Relation | Seq

_SEPARATORS = re.compile(r"\s*(?:,|;|\bor\b|\band\b)\s*")
_REL_RE = re.compile(r"\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|\\lt(?![a-zA-Z])|\\gt(?![a-zA-Z])|<=|>=|<|>")
_REL_NAMES = {"\\le": "<=", "\\ge": ">=", "\\lt": "<", "\\gt": ">", "<=": "<=", ">=": ">=", "<": "<", ">": ">"}
_LABEL_RE = re.compile(r"[a-zA-Z]\w*\s*\(\s*[a-zA-Z]\s*\)")  # f(x)
_TRIG_RE = re.compile(r"(?:sin|cos|tan|cot|sec|csc)")
_DECIMAL_RE = re.compile(r"[-+]?(\d*)\.(\d+)")


def _depth_scan(s: str):
    """Yield (index, depth) for every character, counting (, [, {, \\{ as one depth."""
    depth = 0
    i = 0
    while i < len(s):
        two = s[i : i + 2]
        if two in ("\\{", "\\}"):
            if two == "\\}":
                depth -= 1
            yield i, depth
            if two == "\\{":
                depth += 1
            i += 2
            continue
        c = s[i]
        if c in ")]}":
            depth -= 1
        yield i, depth
        if c in "([{":
            depth += 1
        i += 1


def split_top(s: str, pattern: re.Pattern) -> list[str]:
    """Split s on pattern matches that sit outside every bracket."""
    top = {i for i, d in _depth_scan(s) if d == 0}
    parts, last = [], 0
    for m in pattern.finditer(s):
        if m.start() in top and (m.end() - 1 in top or m.end() == m.start()):
            parts.append(s[last : m.start()])
            last = m.end()
    parts.append(s[last:])
    return parts


def _wrapped(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) if one bracket pair encloses all of s (types may differ: [1,2))."""
    if s.startswith("\\langle") and s.endswith("\\rangle"):
        return "(", s[len("\\langle") : -len("\\rangle")], ")"  # vectors <a, b> read as tuples
    if s.startswith("\\{"):
        opener, closers = "\\{", ("\\}",)
    elif s[:1] in ("(", "["):
        opener, closers = s[0], (")", "]")
    else:
        return None
    close = next((c for c in closers if s.endswith(c)), None)
    if close is None:
        return None
    for i, d in _depth_scan(s):
        if d == 0 and i not in (0, len(s) - len(close)):
            return None  # the first bracket closes before the end: "(1)+(2)"
    return opener, s[len(opener) : len(s) - len(close)], close


def parse_answer(s: str) -> Node:
    """The structure of a normalized answer string."""
    s = s.strip()
    if not s:
        raise ParseError("empty")
    if s.count("\\pm") + s.count("\\mp") == 1:
        op = "\\pm" if "\\pm" in s else "\\mp"
        first, second = ("+", "-") if op == "\\pm" else ("-", "+")
        return Seq("list", (parse_answer(s.replace(op, first)), parse_answer(s.replace(op, second))))
    if "\\pm" in s or "\\mp" in s:
        raise ParseError("several \\pm")
    union = split_top(s, re.compile(r"\\cup(?![a-zA-Z])"))
    if len(union) > 1:
        return Seq("union", tuple(_interval(_item(p)) for p in union))
    parts = [p for p in split_top(s, _SEPARATORS)]
    if len(parts) > MAX_ITEMS:
        raise ParseError("too many items")
    if len(parts) > 1:
        if any(not p.strip() for p in parts):
            raise ParseError("empty item")
        return Seq("list", tuple(_item(p.strip()) for p in parts))
    return _item(s)


def _interval(node: Node) -> Seq:
    if isinstance(node, Seq) and node.kind in ("interval", "tuple") and len(node.items) == 2:
        return Seq("interval", node.items, node.brackets)
    raise ParseError("union of non-intervals")


def _item(s: str) -> Node:
    s = s.strip()
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)  # x \in [1, 2)
    s = re.sub(r"^[A-Z]\s*(?=\([^()]*,[^()]*\)$)", "", s)  # the point A(1, 2)
    if s in ("\\emptyset", "\\varnothing", "\\{\\}", "\\{ \\}"):
        return Seq("set", ())
    w = _wrapped(s)
    if w is not None:
        opener, inner, close = w
        if opener == "\\{":
            items = split_top(inner, re.compile(r"\s*[,;]\s*"))
            return Seq("set", tuple(_item(p) for p in items if p.strip()))
        items = split_top(inner, re.compile(r"\s*,\s*"))
        if len(items) > 1:
            if len(items) > MAX_ITEMS or any(not p.strip() for p in items):
                raise ParseError("bad tuple")
            nodes = tuple(_item(p) for p in items)
            brackets = opener + close
            infinite = any(isinstance(n, Scalar) and n.expr.has(sympy.oo, -sympy.oo) for n in nodes)
            kind = "interval" if len(nodes) == 2 and (brackets in ("[)", "(]") or infinite) else "tuple"
            return Seq(kind, nodes, brackets)
    sides = split_top(s, re.compile(r"(?<![<>!\\])=(?!=)"))
    if len(sides) > 1:
        lhs_text = sides[0].strip()
        w = _wrapped(lhs_text)
        is_tuple = w is not None and len(split_top(w[1], re.compile(","))) > 1
        if _LABEL_RE.fullmatch(lhs_text) or is_tuple:
            return Equation(None, _item(sides[-1]))  # f(x) = ..., (a, b) = (2, 3)
        rhs = _scalar(sides[-1])
        try:
            lhs = parse_expr(lhs_text)
        except (ParseError, ValueError):
            lhs = None
        return Equation(lhs, rhs)
    rel = _relation(s)
    if rel is not None:
        return rel
    return _scalar(s)


def _relation(s: str) -> Node | None:
    ops = [m for m in _REL_RE.finditer(s)]
    if not ops:
        return None
    pieces, names, last = [], [], 0
    for m in ops:
        pieces.append(s[last : m.start()])
        names.append(_REL_NAMES[m.group(0)])
        last = m.end()
    pieces.append(s[last:])
    exprs = tuple(parse_expr(p) for p in pieces)
    return _as_interval(exprs, tuple(names)) or Relation(exprs, tuple(names))


def _as_interval(exprs: tuple, ops: tuple) -> Seq | None:
    """x > 3 -> (3, oo); -1 <= x < 2 -> [-1, 2). None when it is not a 1-D range."""
    oo = sympy.oo
    if len(exprs) == 2:
        a, b = exprs
        if isinstance(b, sympy.Symbol) and not a.free_symbols:  # 3 < x  ==  x > 3
            a, b = b, a
            ops = ({"<": ">", ">": "<", "<=": ">=", ">=": "<="}[ops[0]],)
        if not (isinstance(a, sympy.Symbol) and not b.free_symbols):
            return None
        op = ops[0]
        if op in ("<", "<="):
            return Seq("interval", (Scalar(-oo), Scalar(b)), _brackets(False, op == "<="))
        return Seq("interval", (Scalar(b), Scalar(oo)), _brackets(op == ">=", False))
    if len(exprs) == 3 and isinstance(exprs[1], sympy.Symbol):
        lo, hi = exprs[0], exprs[2]
        if lo.free_symbols or hi.free_symbols:
            return None
        if all(o in ("<", "<=") for o in ops):
            return Seq("interval", (Scalar(lo), Scalar(hi)), _brackets(ops[0] == "<=", ops[1] == "<="))
        if all(o in (">", ">=") for o in ops):
            return Seq("interval", (Scalar(hi), Scalar(lo)), _brackets(ops[1] == ">=", ops[0] == ">="))
    return None


def _brackets(left_closed: bool, right_closed: bool) -> str:
    return ("[" if left_closed else "(") + ("]" if right_closed else ")")


def _scalar(s: str) -> Scalar:
    s = s.strip()
    percent = degree = False
    if s.endswith("%"):
        percent, s = True, s[:-1].strip()
    elif s.endswith("°") and not _TRIG_RE.search(s):  # in \cos 60° the degree is the argument's
        degree, s = True, s[:-1].strip()
    decimal = None
    m = _DECIMAL_RE.fullmatch(s)
    if m:
        digits = (m.group(1) + m.group(2)).lstrip("0")
        decimal = (len(m.group(2)), len(digits))
    return Scalar(parse_expr(s), percent, degree, decimal)
