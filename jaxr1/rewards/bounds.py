"""Size-checked arithmetic for building sympy objects from untrusted answers.

sympy evaluates numeric powers and factorials eagerly, so `9^{9^{9^9}}` or `10**10**10`
would hang the process before any comparison starts. Every operation the parser performs
goes through these helpers, which estimate the size of the result first and refuse
anything past the limits below (the answer then scores 0 as a parse failure).
"""

from __future__ import annotations

import math

import sympy

MAX_DIGITS = 12_000  # exact numbers up to ~12k digits (2006! has 5,764)
MAX_FLOAT_EXP10 = 100_000  # |log10| of a float value
MAX_SYMBOLIC_EXPONENT = 1_000  # (x+1)^1000 stays unexpanded, but evaluating it must stay cheap
MAX_ROOT_INDEX = 100
MAX_FACTORIAL = 3_000
MAX_LITERAL_CHARS = 400
MAX_EXP_HEIGHT = 2
MAX_BINOMIAL_N = 10_000


class TooLarge(ValueError):
    """An answer whose value would be too costly to build; scored as a parse failure."""


def _digits(n: int) -> float:
    return abs(n).bit_length() * 0.30103


def magnitude(x: sympy.Expr) -> float:
    """Approximate number of decimal digits needed to write x exactly (its 'size')."""
    if x.is_Rational:
        return max(_digits(x.p), _digits(x.q))
    if x.is_Float:
        if x == 0:
            return 0.0
        mant, exp = x._mpf_[1], x._mpf_[2]
        return abs((exp + mant.bit_length()) * 0.30103)
    return 0.0


def check(x: sympy.Expr) -> sympy.Expr:
    """Raise TooLarge for numbers past the limits; return x unchanged otherwise."""
    if x.is_Rational:
        if magnitude(x) > MAX_DIGITS:
            raise TooLarge("number too large")
    elif x.is_Float:
        if magnitude(x) > MAX_FLOAT_EXP10:
            raise TooLarge("float too large")
    elif x.has(sympy.zoo, sympy.nan):
        raise TooLarge("undefined value")
    return x


def number(text: str) -> sympy.Expr:
    """A literal as an exact Rational ('0.75' -> 3/4, '1.2e3' -> 1200)."""
    if len(text) > MAX_LITERAL_CHARS:
        raise TooLarge("literal too long")
    mant, _, exp = text.lower().partition("e")
    if exp and abs(int(exp)) > MAX_DIGITS:
        raise TooLarge("exponent too large")
    return check(sympy.Rational(text))


def add(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    return check(a + b)


def mul(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if a.is_Number and b.is_Number and magnitude(a) + magnitude(b) > 2 * MAX_DIGITS:
        raise TooLarge("product too large")
    return check(a * b)


def div(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    if b == 0:
        raise TooLarge("division by zero")
    return mul(a, pow_(b, sympy.Integer(-1)))


def _approx_abs(e: sympy.Expr) -> float:
    """|e| as a float for a numeric (symbol-free) expression, inf when unknown."""
    try:
        v = complex(sympy.N(e, 15))
    except (TypeError, ValueError, OverflowError):
        return math.inf
    return abs(v)


def pow_(base: sympy.Expr, exp: sympy.Expr) -> sympy.Expr:
    """base**exp after checking that the result stays small enough to build."""
    if base.is_Number and exp.is_Number:
        if base == 0 and exp.is_negative:
            raise TooLarge("division by zero")
        if base in (0, 1):
            return base
        if exp.is_Rational and exp.q > MAX_ROOT_INDEX:
            raise TooLarge("root index too large")
        size = magnitude(base) * float(abs(exp))
        if size > MAX_DIGITS or (base.is_Float and size > MAX_FLOAT_EXP10):
            raise TooLarge("power too large")
        if exp.is_Rational and exp.q > 1 and magnitude(base) > 1000:
            raise TooLarge("radicand too large")  # root extraction tries factoring
        return check(base**exp)
    if exp.is_Number:
        if abs(exp) > MAX_SYMBOLIC_EXPONENT:
            raise TooLarge("symbolic exponent too large")
        return check(base**exp)
    if exp.free_symbols:
        result = check(base**exp)
        if exp_height(result) > MAX_EXP_HEIGHT:
            raise TooLarge("tower of exponentials")  # e^{e^{e^{x}}} overflows any evaluation
        return result
    if not base.free_symbols:
        # e.g. 2^{\sqrt{2}} or \pi^{10^{100}}: bound with a float estimate of the exponent.
        e_abs, b_abs = _approx_abs(exp), _approx_abs(base)
        b_mag = abs(math.log10(b_abs)) if 0 < b_abs < math.inf else (0.0 if b_abs == 0 else math.inf)
        if not math.isfinite(e_abs) or e_abs * max(b_mag, 1.0) > MAX_DIGITS:
            raise TooLarge("power too large")
    return check(base**exp)


def exp_height(e: sympy.Expr) -> int:
    """Nesting depth of exponentials whose exponent varies (e^{2^x} has height 2)."""
    if e.is_Atom:
        return 0
    if isinstance(e, sympy.exp):
        return 1 + exp_height(e.args[0])
    if e.is_Pow and e.exp.free_symbols:
        return max(exp_height(e.base), 1 + exp_height(e.exp))
    return max(exp_height(a) for a in e.args)


def factorial(n: sympy.Expr) -> sympy.Expr:
    if not (n.is_Integer and 0 <= n <= MAX_FACTORIAL):
        raise TooLarge("factorial argument out of range")
    return sympy.factorial(n)


def binomial(n: sympy.Expr, k: sympy.Expr) -> sympy.Expr:
    if not (n.is_Integer and k.is_Integer and 0 <= n <= MAX_BINOMIAL_N):
        raise TooLarge("binomial argument out of range")
    return check(sympy.binomial(n, k))
