"""verify's stated rules: tolerances, multiple choice, structure, never raising."""

import pytest

from jaxr1.rewards import check, verify


@pytest.mark.parametrize(
    "pred,gold,expected",
    [
        # Exact numbers compare exactly, however small.
        ("\\frac{1}{10^{30}}", "0", False),
        ("\\frac{1}{2004!}", "\\frac{2005}{2005!}", True),
        # Decimals are exact rationals: 0.1 + 0.2 is 0.3.
        ("0.1 + 0.2", "0.3", True),
        # Irrationals: 30 digits, relative 1e-12.
        ("\\sqrt{2}\\sqrt{3}", "\\sqrt{6}", True),
        ("\\pi", "\\frac{355}{113}", False),
        # Default "exact": a predicted decimal stands for an exact gold only at >= 6 places ...
        ("0.666667", "\\frac{2}{3}", True),
        ("0.67", "\\frac{2}{3}", False),
        ("1.73", "\\sqrt{3}", False),
        ("1.7320508", "\\sqrt{3}", True),
        ("0.666666", "\\frac{2}{3}", False),  # truncated, not rounded
        # ... while a gold decimal with >= min_sig_digits (3) significant digits is a rounding.
        ("\\sqrt{3}", "1.73", True),
        ("\\sqrt{3}", "1.7", False),
        ("2.004", "2", False),  # 2 has an exact 3-place form
        ("0.54", "0.5", False),  # two decimals compare exactly
    ],
)
def test_tolerance_rules(pred, gold, expected):
    assert verify(pred, gold) is expected


@pytest.mark.parametrize(
    "pred,gold,min_sig,expected",
    [
        ("0.667", "\\frac{2}{3}", 3, True),
        ("0.67", "\\frac{2}{3}", 3, False),  # too few digits for the default
        ("0.67", "\\frac{2}{3}", 2, True),
        ("0.7", "\\frac{2}{3}", 2, False),
        ("0.66", "\\frac{2}{3}", 2, False),  # truncated, not rounded
        ("3.14", "\\pi", 3, True),
        ("3.1", "\\pi", 3, False),
        ("2.004", "2", 3, False),
        ("0.54", "0.5", 2, False),
    ],
)
def test_rounded_policy(pred, gold, min_sig, expected):
    assert verify(pred, gold, numeric_match="rounded", min_sig_digits=min_sig) is expected


def test_rounded_accepts_everything_exact_does():
    pairs = [("0.666667", "\\frac23"), ("\\sqrt{3}", "1.73"), ("3.141593", "\\pi"), ("0.75", "\\frac34")]
    for pred, gold in pairs:
        assert verify(pred, gold) and verify(pred, gold, numeric_match="rounded")


@pytest.mark.parametrize("kwargs", [{"numeric_match": "close"}, {"min_sig_digits": 0}, {"min_sig_digits": 2.5}])
def test_bad_policy_raises(kwargs):
    with pytest.raises(ValueError):
        verify("1", "1", **kwargs)
    with pytest.raises(ValueError):
        check("1", "1", **kwargs)


def test_choices_map_text_and_letters():
    choices = ["A. 10", "B. 12", "C. 14"]
    assert verify("12", "B", choices=choices)
    assert verify("B", "12", choices=choices)
    assert not verify("14", "B", choices=choices)
    assert not verify("C", "12", choices=choices)
    # Duplicate option values cannot identify a letter.
    assert not verify("12", "B", choices=["12", "12", "14"])


def test_status_reports_reasons():
    assert check("<answer></answer>", "3").status == "no_answer"
    assert check("x" * 5000, "3").status == "too_long"
    assert check("\\frac{", "3").status == "parse_failure"
    assert check("9^{9^{9^9}}", "3").status == "parse_failure"
    assert check("3", "3").status == "ok"


@pytest.mark.parametrize("bad", [None, 3, b"3", ["3"], {"a": 1}])
def test_non_string_inputs_never_raise(bad):
    assert verify(bad, "3") is False  # type: ignore[arg-type]
    assert verify("3", bad) is False  # type: ignore[arg-type]


def test_verify_with_timeout_runs_in_worker():
    assert verify("\\frac{6}{8}", "0.75", timeout_s=30.0)
    assert not verify("9^{9^{9^9}}", "1", timeout_s=30.0)
    # The policy travels to the worker.
    assert not verify("1.73", "\\sqrt{3}", timeout_s=30.0)
    assert verify("1.73", "\\sqrt{3}", numeric_match="rounded", timeout_s=30.0)
