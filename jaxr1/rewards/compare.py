"""Equality of parsed answers: numbers, expressions, equations and sequences.

Tolerance rules (stated here because the reward depends on them):
- exact numbers (integers, fractions, decimals read exactly: 0.75 == 3/4) compare exactly,
  so 1/2004! != 1/2006! however small both are;
- irrational values compare numerically at 30 digits with relative tolerance 1e-12;
- a bare decimal may stand for an exact value it is a rounding of, as the NumericPolicy
  allows (the policy is documented in verify.py); two decimals compare exactly (0.5 != 0.54);
- expressions with symbols are compared at fixed pseudo-random points (no simplify(), which
  can run for minutes); they must agree at every point where both are defined.

Order rules: tuples/points "(1, 2)" are ordered; sets "\\{...\\}", bare lists "1, 2", "x = 1 or
x = 2" and unions of intervals are unordered (a perfect matching, so duplicates count); a
two-item bracket may be an interval or a point, so its bracket types must agree; a set never
equals a tuple; singletons equal their element. Equations: "x = 3" equals 3 when the left
side is a name (or a label like "Area", "f(x)"), and two equations are equal when their
differences are proportional ("y = 2x + 1" vs "2x - y + 1 = 0").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import sympy

from jaxr1.rewards.structure import Equation, Node, Relation, Scalar, Seq

REL_TOL = 1e-12
SYMBOLIC_TOL = 1e-9
NUM_POINTS = 6
EXACT_PLACES = 6  # math-verify's float_rounding: a decimal this long is "the exact value"
NUMERIC_MATCHES = ("exact", "rounded")


@dataclass(frozen=True)
class NumericPolicy:
    """When a decimal equals an exact value it rounds (see verify.py for the policy)."""

    match: str = "exact"
    min_sig_digits: int = 3

    def __post_init__(self):
        if self.match not in NUMERIC_MATCHES:
            raise ValueError(f"numeric_match must be one of {NUMERIC_MATCHES}, got {self.match!r}")
        digits = self.min_sig_digits
        if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
            raise ValueError(f"min_sig_digits must be an integer >= 1, got {digits!r}")

    def enough_digits(self, places: int, significant: int, *, gold: bool) -> bool:
        """Does a decimal carry enough digits to stand for an exact value it rounds?"""
        if significant < 1:
            return False  # 0.000000 is zero, not a rounding of 1/2004!
        if places >= EXACT_PLACES:
            return True
        # A gold's precision is the intended one (4.2426 for 3\sqrt2), in either mode; a
        # prediction may be that short only in rounded mode.
        return (gold or self.match == "rounded") and significant >= self.min_sig_digits


EXACT = NumericPolicy()


def _point(k: int, symbols: list) -> dict:
    """The k-th test point: fixed 'generic' values, distinct per symbol, of both signs."""
    rng = random.Random(1_000_003 * k + 7)
    point = {}
    for j, s in enumerate(symbols):
        value = sympy.Rational(rng.randint(2_000, 25_000), 10_000)  # |v| in [0.2, 2.5]
        point[s] = -value if (k + j) % 3 == 0 else value
    return point


def _num(e: sympy.Expr) -> complex | None:
    try:
        v = complex(sympy.N(e, 30))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    if v != v or abs(v) == float("inf"):
        return None
    return v


def _close(a: complex, b: complex, tol: float) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b))


def _numeric_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    if a.is_Rational and b.is_Rational:
        return a == b
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return False  # structural equality already covered oo == oo
    diff = sympy.N(a - b, 30)  # evalf raises precision until the difference is resolved
    if diff == 0:
        return True
    va, vb = _num(a), _num(b)
    if va is None or vb is None:
        return False
    dv = _num(diff)
    if dv is None:
        return False
    return abs(dv) <= REL_TOL * max(abs(va), abs(vb))


def _rounds_to(
    decimal: tuple[int, int], dec_value: sympy.Expr, exact: sympy.Expr, policy: NumericPolicy, gold: bool
) -> bool:
    """Is the decimal literal a rounding of the exact value, with digits enough for the policy?"""
    places, significant = decimal
    if not policy.enough_digits(places, significant, gold=gold) or exact.free_symbols:
        return False
    scaled = exact * sympy.Integer(10) ** places
    if scaled.is_Integer:
        return False  # the exact value has a finite form with this many places; must be equal
    v = _num(exact - dec_value)
    if v is None or v.imag != 0:
        return False
    return abs(v.real) <= 0.5 * 10.0**-places * (1 + 1e-9)


def _symbolic_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    symbols = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    agree = 0
    for k in range(NUM_POINTS):
        point = _point(k, symbols)
        va, vb = _num(a.xreplace(point)), _num(b.xreplace(point))
        if va is None and vb is None:
            continue
        if va is None or vb is None:
            return False
        if abs(va - vb) > SYMBOLIC_TOL * max(1.0, abs(va), abs(vb)):
            return False
        agree += 1
    return agree >= 3


def exprs_equal(a: sympy.Expr, b: sympy.Expr, dec_a=None, dec_b=None, policy: NumericPolicy = EXACT) -> bool:
    """a is the gold side, b the prediction; dec_* are their decimal shapes (Scalar.decimal)."""
    if a == b:
        return True
    if a.free_symbols or b.free_symbols:
        return _symbolic_equal(a, b)
    if _numeric_equal(a, b):
        return True
    if dec_a is not None and dec_b is None:
        return _rounds_to(dec_a, a, b, policy, gold=True)
    if dec_b is not None and dec_a is None:
        return _rounds_to(dec_b, b, a, policy, gold=False)
    return False


def _alternatives(s: Scalar, other: Scalar) -> list[sympy.Expr]:
    """Readings of a marked value when only one side carries the mark: 30% -> 30 or 0.3."""
    if s.percent and not other.percent:
        return [s.expr, s.expr / 100]
    if s.degree and not other.degree:
        return [s.expr, s.expr * sympy.pi / 180]
    return [s.expr]


def scalars_equal(g: Scalar, p: Scalar, policy: NumericPolicy = EXACT) -> bool:
    for a in _alternatives(g, p):
        for b in _alternatives(p, g):
            da = g.decimal if a is g.expr else None
            db = p.decimal if b is p.expr else None
            if exprs_equal(a, b, da, db, policy):
                return True
    return False


def _simple_lhs(e: Equation) -> bool:
    """x = 3, f(x) = 3, Area = 12, 3 \\times 4 = 12: the right side is the answer."""
    if e.lhs is None or isinstance(e.lhs, sympy.Symbol) or not e.lhs.free_symbols:
        return True
    return isinstance(e.rhs, Scalar) and not e.rhs.expr.free_symbols


def _equations_equal(g: Equation, p: Equation, policy: NumericPolicy) -> bool:
    if g.lhs is None or p.lhs is None or g.lhs == p.lhs:
        return nodes_equal(g.rhs, p.rhs, policy)  # same (or a label's) name: compare the values
    # Same set of solutions up to a constant factor: y = 2x + 1 vs 2x - y + 1 = 0.
    d1, d2 = g.lhs - g.rhs.expr, p.lhs - p.rhs.expr
    if not (d1.free_symbols and d2.free_symbols) or d1.free_symbols != d2.free_symbols:
        return False
    ratio_points = []
    symbols = sorted(d1.free_symbols, key=lambda s: s.name)
    for k in range(NUM_POINTS):
        point = _point(k, symbols)
        v1, v2 = _num(d1.xreplace(point)), _num(d2.xreplace(point))
        if v1 is None or v2 is None or abs(v2) < 1e-12:
            continue
        ratio_points.append(v1 / v2)
    if len(ratio_points) < 3 or abs(ratio_points[0]) < 1e-12:
        return False
    return all(_close(r, ratio_points[0], SYMBOLIC_TOL) for r in ratio_points)


def _match_unordered(gs: tuple, ps: tuple, policy: NumericPolicy) -> bool:
    """Perfect matching between gold and predicted items (augmenting paths; n is small)."""
    if len(gs) != len(ps):
        return False
    eq = [[nodes_equal(g, p, policy) for p in ps] for g in gs]
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for j in range(len(ps)):
            if eq[i][j] and j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(assign(i, set()) for i in range(len(gs)))


def _seqs_equal(g: Seq, p: Seq, policy: NumericPolicy) -> bool:
    unordered = {"list", "set", "union"}
    if g.kind in unordered and p.kind in unordered:
        if "set" in (g.kind, p.kind) and "union" in (g.kind, p.kind):
            return False
        return _match_unordered(g.items, p.items, policy)
    if len(g.items) != len(p.items):
        return False
    if "interval" in (g.kind, p.kind) or (len(g.items) == 2 and g.kind == p.kind == "tuple"):
        # A 2-item bracket is an interval or a point: the bracket types must agree.
        if g.brackets != p.brackets or "list" in (g.kind, p.kind):
            return False
    elif {g.kind, p.kind} == {"set", "tuple"}:
        return False
    return all(nodes_equal(a, b, policy) for a, b in zip(g.items, p.items))


def _single(n: Node) -> Node:
    while isinstance(n, Seq) and n.kind in ("list", "set") and len(n.items) == 1:
        n = n.items[0]
    return n


def nodes_equal(g: Node, p: Node, policy: NumericPolicy = EXACT) -> bool:
    """Is the predicted structure p the same answer as the gold structure g?"""
    g, p = _single(g), _single(p)
    if isinstance(g, Scalar) and isinstance(p, Scalar):
        return scalars_equal(g, p, policy)
    if isinstance(p, Equation) and not isinstance(g, Equation):
        return _simple_lhs(p) and nodes_equal(g, p.rhs, policy)
    if isinstance(g, Equation) and not isinstance(p, Equation):
        return _simple_lhs(g) and nodes_equal(g.rhs, p, policy)
    if isinstance(g, Equation) and isinstance(p, Equation):
        return _equations_equal(g, p, policy)
    if isinstance(g, Seq) and isinstance(p, Seq):
        return _seqs_equal(g, p, policy)
    if isinstance(g, Relation) and isinstance(p, Relation):
        return g.ops == p.ops and all(exprs_equal(a, b) for a, b in zip(g.parts, p.parts, strict=True))
    return False
