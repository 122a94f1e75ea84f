"""extract_answer: last <answer>, else last \\boxed (nested), else 'the answer is X'."""

import pytest

from jaxr1.rewards import extract_answer
from jaxr1.rewards.extract import stated_value, unwrap


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>x</think><answer> 3 </answer>", "3"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>\\boxed{7}</answer>", "7"),
        ("<Answer>4</Answer>", "4"),
        ("so \\boxed{\\frac{1}{2}} and finally \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{5}", "5"),
        ("Thus, the final answer is 12.", "12"),
        ("The answer is 2.5", "2.5"),
        ("The answer is B. 12", "B. 12"),
        ("Answer: (C)", "(C)"),
        ("The answer is 5. We are done.", "5"),
        ("no answer here", None),
        ("", None),
        ("<answer></answer>", None),
        ("<answer>  \n </answer>", None),
        ("<answer>3", None),  # unclosed: not an answer block
        ("\\boxed{3", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The state is Alabama.", "Alabama."),
        ("It's Alabama", "Alabama"),
        ("The sum equals 7", "7"),
        ("So, Alabama is the correct answer.", "Alabama"),
        ("We checked. Thus Alabama is the answer", "Alabama"),
        ("Alabama is not the state; the state is Georgia", "Georgia"),
        # Negations stay in the value, so it never equals the un-negated gold.
        ("The state is not Alabama", "not Alabama"),
        ("It's not Alabama", "not Alabama"),
        ("It isn't Alabama", None),
        ("Alabama", None),
        ("The state is", None),
    ],
)
def test_stated_value(text, expected):
    assert stated_value(text) == expected


def test_extract_answer_non_string():
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_unwrap_gold_forms():
    assert unwrap("<answer> 3 </answer>") == "3"
    assert unwrap("\\boxed{3}") == "3"
    assert unwrap(" 3 ") == "3"
    assert unwrap("<answer></answer>") == ""


def test_extract_is_linear_on_adversarial_tags():
    import time

    for text in ("<answer>" * 200_000, "\\boxed{" * 200_000, "{" * 500_000 + "\\boxed{1}", "answer is " * 100_000):
        start = time.perf_counter()
        extract_answer(text)
        assert time.perf_counter() - start < 2.0
