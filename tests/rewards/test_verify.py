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
        # A decimal with >= 2 significant digits matches an exact value it rounds.
        ("0.67", "\\frac{2}{3}", True),
        ("0.7", "\\frac{2}{3}", False),  # one significant digit is too coarse
        ("0.66", "\\frac{2}{3}", False),  # truncated, not rounded
        ("1.73", "\\sqrt{3}", True),
        ("2.004", "2", False),  # 2 has an exact 3-place form
        ("0.54", "0.5", False),  # two decimals compare exactly
    ],
)
def test_tolerance_rules(pred, gold, expected):
    assert verify(pred, gold) is expected


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
