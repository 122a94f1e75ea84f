"""Untrusted model output: pathological inputs return 0 fast; random strings never raise."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxr1.rewards import RewardScorer, check, verify

# In-process bound per call. Generous: the test machine is shared and loaded.
FAST_S = 3.0

PATHOLOGICAL = [
    "10**10**10",
    "9^{9^{9^9}}",
    "2^{2^{2^{2^{2^{2}}}}}",
    "10^{10^{10}} - 10^{10^{10}}",
    "1" * 1_000_000,  # a 1 MB answer
    "<answer>" + "9" * 1_000_000 + "</answer>",
    "\\boxed{" + "(" * 100_000 + "}",
    "(" * 100_000,
    "\\frac{" * 50_000,
    "e^{e^{e^{e^{e^{x}}}}}",
    "\\exp(\\exp(\\exp(\\exp(x))))",
    "1000000!",
    "\\binom{10^{9}}{5}",
    "(x+1)^{10^{6}}",
    "\\sqrt[1000000]{2}",
    "10^{-10^{10}}",
    "1.0001^{10^{9}}",
    "\\frac{1}{0}",
    "<answer>" * 200_000,
    "\\boxed{" * 200_000,
    "a^" * 300 + "a",
    "1+" * 400 + "1",
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_score_zero_fast(text):
    for pred, gold in ((text, "1"), (text, "x"), ("1", text)):
        start = time.perf_counter()
        assert verify(pred, gold) is False
        assert time.perf_counter() - start < FAST_S, (pred[:40], gold[:40])


def test_pathological_inputs_through_the_scorer():
    with RewardScorer([("accuracy", 1.0, {})], num_workers=2, timeout_s=5.0) as scorer:
        start = time.perf_counter()
        comps = [f"<answer>{t}</answer>" for t in PATHOLOGICAL]
        result = scorer.submit(comps, [{"answer": "1"}] * len(comps)).result()
        elapsed = time.perf_counter() - start
    assert result.total.tolist() == [0.0] * len(PATHOLOGICAL)
    assert elapsed < 60.0


_TOKENS = [
    "\\frac", "{", "}", "^", "_", "(", ")", "[", "]", "\\sqrt", "9", "10", "0", "x", "y", "=", ",", ";",
    "\\pi", "!", "\\left(", "\\right)", "%", "\\%", "°", "^\\circ", "\\boxed{", "<answer>", "</answer>",
    "\\{", "\\}", "\\cup", "\\infty", "-", "+", "*", "/", ".", " ", "e", "\\text{", "cm", "A", "(B)",
    "\\pm", "\\le", "<", "|", "\\overline{", "\\sin", "\\log_", "**", "\\binom", "\\dfrac", "1,000",
    "\\cdot", "\\times", "or", "the answer is ", "$", "\\", "\\lfloor", "\\rfloor", "\\exp", "\\langle",
]
_adversarial = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=40).map("".join)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(pred=st.one_of(st.text(max_size=200), _adversarial), gold=st.one_of(st.text(max_size=50), _adversarial))
def test_random_strings_never_raise(pred, gold):
    start = time.perf_counter()
    out = check(pred, gold)
    assert isinstance(out.correct, bool)
    assert out.status in {"ok", "no_answer", "parse_failure", "too_long", "error"}
    assert out.status != "error", (pred, gold)  # an internal exception is a bug, even if caught
    assert time.perf_counter() - start < FAST_S


@_SETTINGS
@given(pred=_adversarial, choices=st.lists(_adversarial, max_size=5))
def test_random_choices_never_raise(pred, choices):
    assert isinstance(verify(pred, "B", choices=choices), bool)


@settings(max_examples=100, deadline=None)
@given(s=_adversarial)
def test_a_string_verifies_against_itself_or_fails_cleanly(s):
    # Reflexivity where the answer parses; never an exception either way.
    out = check(s, s)
    assert out.status in {"ok", "no_answer", "parse_failure", "too_long"}
