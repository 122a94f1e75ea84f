"""A small recursive-descent parser: one scalar LaTeX/plain-text math expression -> sympy.

Hand-written so that jaxr1 decides every reading (`4\\sqrt(2)` is 4*sqrt(2), `2\\frac12` is a
mixed number) and so that no string ever reaches `eval` or sympify. All arithmetic goes
through `bounds`, which refuses values too large to build. Structure (lists, intervals,
equations) is split off before this parser runs; see `structure.py`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import sympy

from jaxr1.rewards import bounds

MAX_TOKENS = 400
MAX_DEPTH = 60


class ParseError(ValueError):
    """The text is not a math expression this parser understands."""


class Tok(NamedTuple):
    kind: str  # num, cmd, word, sym
    text: str


_TOKEN_RE = re.compile(
    r"(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+(?![a-zA-Z]))?|\.\d+)"
    r"|(?P<cmd>\\[a-zA-Z]+|\\[{}|])"
    r"|(?P<word>[a-zA-Z]+)"
    r"|(?P<sym>[-+*/^_!=<>(){}\[\],|%°'.:;&])"
    r"|(?P<space>\s+)"
)

_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
    "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "exp": sympy.exp,
    "ln": sympy.log, "log": sympy.log, "lg": lambda x: sympy.log(x, 10),
}
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan"}
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau",
    "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda",
    "Xi", "Sigma", "Phi", "Psi", "Omega",
}
_INFINITY = {"infty", "infinity", "inf", "oo"}
_MUL_CMDS = {"\\cdot", "\\times", "\\ast"}
_ATOM_CMDS = {"frac", "sqrt", "binom", "lfloor", "lceil", "pi"}


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "space":
            continue
        value = m.group(kind)
        if kind == "word":
            toks.extend(_split_word(value))
        else:
            toks.append(Tok(kind, value))
        if len(toks) > MAX_TOKENS:
            raise ParseError("too many tokens")
    return toks


def _split_word(word: str) -> list[Tok]:
    """Plain letters: function names, 'pi', or a product of one/two single-letter symbols.

    Three or more unknown letters ('Paris') are a word, which this parser rejects so the
    answer is compared as text instead of as p*a*r*i*s.
    """
    if word in _FUNCS or word in ("pi", "sqrt") or word in _INFINITY:
        return [Tok("word", word)]
    for name in sorted(_FUNCS, key=len, reverse=True):
        if word.startswith(name) and len(word) - len(name) <= 2:  # "sinx", "lnx"
            return [Tok("word", name)] + [Tok("word", c) for c in word[len(name) :]]
    if len(word) <= 2:
        return [Tok("word", c) for c in word]
    raise ParseError(f"word {word!r}")


class _Parser:
    def __init__(self, toks: list[Tok]):
        self.toks = toks
        self.i = 0
        self.depth = 0
        self.abs_depth = 0
        self.last_frac_ints = False

    # -- token helpers ---------------------------------------------------------------
    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def is_sym(self, text: str) -> bool:
        t = self.peek()
        return t is not None and t.kind == "sym" and t.text == text

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise ParseError("unexpected end")
        self.i += 1
        return t

    def expect_sym(self, text: str) -> None:
        if not self.is_sym(text):
            raise ParseError(f"expected {text!r}")
        self.i += 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nesting too deep")

    # -- grammar ---------------------------------------------------------------------
    def parse(self) -> sympy.Expr:
        e = self.expr()
        if self.peek() is not None:
            raise ParseError(f"trailing {self.peek().text!r}")
        return e

    def expr(self) -> sympy.Expr:
        self.enter()
        left = self.term()
        while self.is_sym("+") or self.is_sym("-"):
            op = self.take().text
            right = self.term()
            left = bounds.add(left, right if op == "+" else -right)
        self.depth -= 1
        return left

    def term(self) -> sympy.Expr:
        start = self.i
        left = self.unary()
        # Was the first factor a bare integer literal (optionally signed)? Then a following
        # \frac of integers makes a mixed number.
        lit = self.toks[start:self.i]
        if lit and lit[0].kind == "sym" and lit[0].text in "+-":
            lit = lit[1:]
        single_int = len(lit) == 1 and lit[0].kind == "num" and lit[0].text.isdigit()
        while True:
            t = self.peek()
            if t is None:
                break
            if (t.kind == "sym" and t.text in "*/") or t.text in _MUL_CMDS or t.text == "\\div":
                self.take()
                right = self.unary()
                left = bounds.div(left, right) if t.text in ("/", "\\div") else bounds.mul(left, right)
            elif self.starts_atom(t):
                if t.kind == "num":
                    raise ParseError("two numbers side by side")
                is_frac = t.text == "\\frac"
                right = self.power()
                if single_int and is_frac and self.last_frac_ints and not self.is_sym("^"):
                    # 2\frac{1}{2} is the mixed number 2 1/2; the sign of -2\frac12 covers both parts.
                    left = bounds.add(left, right) if left >= 0 else bounds.add(left, -right)
                else:
                    left = bounds.mul(left, right)
            else:
                break
            single_int = False
        return left

    def unary(self) -> sympy.Expr:
        if self.is_sym("-"):
            self.take()
            return -self.unary()
        if self.is_sym("+"):
            self.take()
            return self.unary()
        return self.power()

    def starts_atom(self, t: Tok) -> bool:
        if t.kind in ("num", "word"):
            return True
        if t.kind == "cmd":
            name = t.text[1:]
            return name in _ATOM_CMDS or name in _GREEK or name in _FUNCS or name in _INFINITY
        if t.kind == "sym":
            return t.text in "([{" or (t.text == "|" and self.abs_depth == 0)
        return False

    def power(self) -> sympy.Expr:
        base = self.postfix(self.atom())
        if self.is_sym("^"):
            self.take()
            base = bounds.pow_(base, self.exponent())
        return base

    def exponent(self) -> sympy.Expr:
        self.enter()
        if self.is_sym("-") or self.is_sym("+"):
            sign = -1 if self.take().text == "-" else 1
            e = sign * self.exponent()
        else:
            e = self.postfix(self.atom())
            if self.is_sym("^"):
                self.take()
                e = bounds.pow_(e, self.exponent())
        self.depth -= 1
        return e

    def postfix(self, e: sympy.Expr) -> sympy.Expr:
        while True:
            if self.is_sym("!"):
                self.take()
                e = bounds.factorial(e)
            elif self.is_sym("%"):
                self.take()
                e = bounds.div(e, sympy.Integer(100))
            elif self.is_sym("°"):
                self.take()
                e = bounds.mul(e, sympy.pi / 180)
            else:
                return e

    def group(self, close: str) -> sympy.Expr:
        e = self.expr()
        self.expect_sym(close)
        return e

    def atom(self) -> sympy.Expr:
        self.enter()
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self) -> sympy.Expr:
        t = self.take()
        if t.kind == "num":
            return bounds.number(t.text)
        if t.kind == "sym":
            if t.text == "(":
                return self.group(")")
            if t.text == "[":
                return self.group("]")
            if t.text == "{":
                return self.group("}")
            if t.text == "|" and self.abs_depth == 0:
                self.abs_depth += 1
                e = self.expr()
                self.abs_depth -= 1
                self.expect_sym("|")
                return sympy.Abs(e)
            raise ParseError(f"unexpected {t.text!r}")
        name = t.text[1:] if t.kind == "cmd" else t.text
        if t.kind == "word" and len(name) == 1:
            return self.symbol(name)
        if name == "pi":
            return sympy.pi
        if name in _INFINITY:
            return sympy.oo
        if t.kind == "cmd" and name in _GREEK:
            return self.symbol(name)
        if name == "frac":
            num = self.frac_arg()
            num_int = self.last_frac_ints
            den = self.frac_arg()
            self.last_frac_ints = num_int and self.last_frac_ints
            return bounds.div(num, den)
        if name == "sqrt":
            return self.sqrt(t.kind == "cmd")
        if name == "binom":
            return bounds.binomial(self.frac_arg(), self.frac_arg())
        if name in ("lfloor", "lceil"):
            e = self.expr()
            close = self.take().text
            if close != ("\\rfloor" if name == "lfloor" else "\\rceil"):
                raise ParseError("unclosed floor/ceil")
            return sympy.floor(e) if name == "lfloor" else sympy.ceiling(e)
        if name in _FUNCS:
            return self.function(name)
        raise ParseError(f"unknown {t.text!r}")

    def symbol(self, name: str) -> sympy.Expr:
        if self.is_sym("_"):
            self.take()
            name = name + "_" + self.raw_arg()
        elif name == "e":
            return sympy.E
        return sympy.Symbol(name)

    def raw_arg(self) -> str:
        """Text of a subscript: x_1, a_{n+1}."""
        if self.is_sym("{"):
            self.take()
            parts = []
            while not self.is_sym("}"):
                parts.append(self.take().text)
            self.take()
            return "".join(parts)
        return self.take().text

    def frac_arg(self) -> sympy.Expr:
        """An argument of \\frac, \\sqrt or \\binom: {group}, or one character (\\frac12)."""
        t = self.peek()
        if t is not None and t.kind == "num":
            self.take()
            if len(t.text) > 1:  # \frac12: only the first digit belongs to this argument
                self.toks.insert(self.i, Tok("num", t.text[1:]))
            self.last_frac_ints = True
            return bounds.number(t.text[0])
        if self.is_sym("{"):
            start = self.i
            self.take()
            e = self.group("}")
            inner = self.toks[start + 1 : self.i - 1]
            self.last_frac_ints = len(inner) == 1 and inner[0].kind == "num" and "." not in inner[0].text
            return e
        self.last_frac_ints = False
        return self.atom()

    def sqrt(self, latex: bool) -> sympy.Expr:
        index = sympy.Integer(2)
        if latex and self.is_sym("["):
            self.take()
            index = self.group("]")
            if not (index.is_Integer and 2 <= index <= bounds.MAX_ROOT_INDEX):
                raise ParseError("bad root index")
        t = self.peek()
        if t is not None and t.kind == "num" and not latex:
            arg = bounds.number(self.take().text)  # plain "sqrt2"
        elif self.is_sym("("):
            self.take()
            arg = self.group(")")  # \sqrt(2): the parenthesis is the argument
        else:
            arg = self.frac_arg()
        return bounds.pow_(arg, sympy.Rational(1, 1) / index)

    def function(self, name: str) -> sympy.Expr:
        base = None
        power = None
        if self.is_sym("_") and name == "log":
            self.take()
            base = self.frac_arg()
        if self.is_sym("^"):
            self.take()
            power = self.exponent()
            if power == -1 and name in _INVERSE:
                name, power = _INVERSE[name], None
        if self.is_sym("("):
            self.take()
            arg = self.group(")")
        elif self.is_sym("{"):
            arg = self.frac_arg()
        else:
            # \sin 2x means sin(2x): the argument runs over plain factors.
            arg = self.power()
            while (t := self.peek()) is not None and (
                (t.kind == "word" and len(t.text) == 1)
                or (t.kind == "cmd" and (t.text[1:] in _GREEK or t.text == "\\pi"))
            ):
                arg = bounds.mul(arg, self.power())
        if name == "log" and base is not None:
            if base.is_Number and (base <= 0 or base == 1):
                raise ParseError("bad log base")
            value = sympy.log(arg, base)
        else:
            value = _FUNCS[name](arg)
        value = bounds.check(value)
        if bounds.exp_height(value) > bounds.MAX_EXP_HEIGHT:
            raise bounds.TooLarge("tower of exponentials")
        if power is not None:
            value = bounds.pow_(value, power)
        return value


def parse_expr(text: str) -> sympy.Expr:
    """Parse one scalar expression; raises ParseError (or bounds.TooLarge)."""
    toks = tokenize(text)
    if not toks:
        raise ParseError("empty")
    return _Parser(toks).parse()
