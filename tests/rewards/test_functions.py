"""Reward functions on hand-written completions (malformed tags, two answers, empty answers)."""

from collections import Counter

import numpy as np
import pytest

from jaxr1.rewards import (
    RewardScorer,
    accuracy_reward,
    count_reward,
    format_reward,
    iou_reward,
    mcq_reward,
    overlong_reward,
)


def _check_array(out, n):
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (n,)


FORMAT_CASES = [
    ("<think>reason</think><answer>3</answer>", 1.0),
    ("<think>\nreason\n</think>\n<answer>\n3\n</answer>\n", 1.0),
    ("  <think>r</think> <answer>3</answer><|im_end|>", 1.0),
    ("<think></think><answer>3</answer>", 1.0),  # an empty think is still the format
    ("<think>r</think><answer></answer>", 0.0),  # empty answer
    ("<think>r</think><answer>  </answer>", 0.0),
    ("<think>r</think><answer>3</answer> trailing text", 0.0),
    ("<think>r</think>text between<answer>3</answer>", 0.0),
    ("<answer>3</answer>", 0.0),  # no think
    ("<think>r</think>", 0.0),
    ("<think>r</think><answer>1</answer><answer>2</answer>", 0.0),  # two answer blocks
    ("<think>r<think>x</think></think><answer>3</answer>", 0.0),  # nested think
    ("<answer>3</answer><think>r</think>", 0.0),  # wrong order
    ("<think>r</think><answer>3", 0.0),  # unclosed
    ("<think>r</answer><answer>3</think>", 0.0),  # crossed tags
    ("preamble <think>r</think><answer>3</answer>", 0.0),
    ("", 0.0),
]


def test_format_reward():
    comps = [c for c, _ in FORMAT_CASES]
    out = format_reward(comps, [{}] * len(comps))
    _check_array(out, len(comps))
    assert out.tolist() == [e for _, e in FORMAT_CASES]


def test_accuracy_reward_and_stats():
    comps = [
        "<think>a</think><answer>3</answer>",
        "<think>a</think><answer>1</answer> more <answer>3</answer>",  # two blocks: the last counts
        "<think>a</think><answer></answer>",  # empty
        "<think>a</think><answer>4</answer>",
        "<think>a</think><answer>\\frac{</answer>",  # unparseable
        "<answer>3",  # malformed
        "The answer is \\boxed{3}.",
        "<answer>B</answer>",
    ]
    exs = [{"answer": "3"}] * 7 + [{"answer": "12", "choices": ["10", "12"]}]
    stats = Counter()
    out = accuracy_reward(comps, exs, stats=stats, unknown_ctx=1)
    _check_array(out, len(comps))
    assert out.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert stats["no_answer"] == 2 and stats["parse_failures"] == 1


def test_accuracy_reward_gold_wrapped_like_r1v():
    out = accuracy_reward(["<answer>3</answer>", "<answer>2</answer>"], [{"answer": "<answer> 3 </answer>"}] * 2)
    assert out.tolist() == [1.0, 0.0]


def test_accuracy_numeric_policy_kwargs():
    comps = ["<answer>1.73</answer>", "<answer>1.7</answer>", "<answer>1.7320508</answer>"]
    exs = [{"answer": "\\sqrt{3}"}] * 3
    assert accuracy_reward(comps, exs).tolist() == [0, 0, 1]
    assert accuracy_reward(comps, exs, numeric_match="rounded").tolist() == [1, 0, 1]
    assert accuracy_reward(comps, exs, numeric_match="rounded", min_sig_digits=2).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="numeric_match"):
        accuracy_reward(comps, exs, numeric_match="loose")


def test_numeric_policy_through_the_scorer():
    comps = ["<answer>1.7</answer>", "<answer>1.73</answer>"]
    exs = [{"answer": "\\sqrt{3}"}] * 2
    specs = [("accuracy", 1.0, {"numeric_match": "rounded", "min_sig_digits": 2}), ("mcq", 1.0, {})]
    with RewardScorer(specs, num_workers=1, timeout_s=30.0) as scorer:
        result = scorer.submit(comps, exs).result()
    assert result.per_function["accuracy"].tolist() == [1, 1]
    assert result.per_function["mcq"].tolist() == [0, 0]  # its own (default) policy


def test_mcq_reward_numeric_policy():
    exs = [{"answer": "B", "choices": ["A. 1.5", "B. \\sqrt{3}", "C. 2"]}]
    assert mcq_reward(["<answer>1.73</answer>"], exs).tolist() == [0]
    assert mcq_reward(["<answer>1.73</answer>"], exs, numeric_match="rounded").tolist() == [1]


def test_mcq_reward():
    exs = [{"answer": "B", "choices": ["A. 10", "B. 12", "C. 14"]}] * 5 + [{"answer": "7"}]
    comps = [
        "<answer>B</answer>",
        "<answer>(B) 12</answer>",
        "<answer>12</answer>",
        "<answer>C</answer>",
        "<answer>A or B</answer>",
        "<answer>7</answer>",  # not multiple choice: scored like accuracy
    ]
    out = mcq_reward(comps, exs)
    _check_array(out, len(comps))
    assert out.tolist() == [1, 1, 1, 0, 0, 1]


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("3", 1.0), ("three", 1.0), ("There are 3 cars.", 1.0), ("3 cars", 1.0), ("\\boxed{3}", 1.0),
        ("4", 0.0), ("3.5", 0.0), ("2 or 3", 0.0), ("", 0.0), ("many", 0.0),
    ],
)
def test_count_reward(answer, expected):
    out = count_reward([f"<think>t</think><answer>{answer}</answer>"], [{"answer": "3", "task": "count"}])
    _check_array(out, 1)
    assert out[0] == expected


@pytest.mark.parametrize(
    "answer,expected",
    [("0", 1.0), ("zero", 1.0), ("None", 1.0), ("There are none.", 1.0), ("none of these", 0.0), ("no", 0.0)],
)
def test_count_reward_zero(answer, expected):
    # A count of nothing may be written "none"; "none of these" or a bare "no" is no count.
    out = count_reward([f"<answer>{answer}</answer>"], [{"answer": "0"}])
    assert out[0] == expected


GROUND = {"bbox": [100, 50, 300, 250], "image_size": [500, 1000], "resized_size": [252, 504]}


@pytest.mark.parametrize(
    "answer,extra,expected",
    [
        ("[100, 50, 300, 250]", {"bbox_frame": "original"}, 1.0),
        ('{"bbox_2d": [100, 50, 300, 250], "label": "cat"}', {"bbox_frame": "original"}, 1.0),
        ("[400, 300, 500, 400]", {"bbox_frame": "original"}, 0.0),
        # Resized frame (default when resized_size is known): x * 1000/504, y * 500/252.
        ("[50.4, 25.2, 151.2, 126]", {}, 1.0),
        ("[100, 50, 300, 250]", {}, 0.0),  # original pixels read in the resized frame: wrong place
        ("[100, 100, 300, 500]", {"bbox_frame": "normalized_1000"}, 1.0),
        ("(100, 50), (300, 250)", {"bbox_frame": "original"}, 1.0),
        ("[300, 250, 100, 50]", {"bbox_frame": "original"}, 0.0),  # degenerate (x2 < x1)
        ("no box", {"bbox_frame": "original"}, 0.0),
        ("[1, 2, 3]", {"bbox_frame": "original"}, 0.0),
    ],
)
def test_iou_reward_frames(answer, extra, expected):
    ex = {**GROUND, **extra}
    out = iou_reward([f"<answer>{answer}</answer>"], [ex])
    _check_array(out, 1)
    assert out[0] == expected


def test_iou_threshold_and_continuous():
    ex = {"bbox": [0, 0, 100, 100], "bbox_frame": "original"}
    comp = ["<answer>[0, 0, 100, 60]</answer>"]  # IoU 0.6
    assert iou_reward(comp, [ex], threshold=0.5)[0] == 1.0
    assert iou_reward(comp, [ex], threshold=0.7)[0] == 0.0
    assert iou_reward(comp, [ex], continuous=True)[0] == pytest.approx(0.6)
    # Gold may come as the answer string instead of a bbox key.
    assert iou_reward(comp, [{"answer": "[0, 0, 100, 60]"}])[0] == 1.0


def test_overlong_reward_dapo_shape():
    lengths = np.array([10, 96, 97, 112, 128, 129])
    out = overlong_reward(
        [""] * 6, [{}] * 6, completion_lengths=lengths, max_completion_length=128, soft_cache_length=32
    )
    _check_array(out, 6)
    np.testing.assert_allclose(out, [0, 0, -1 / 32, -0.5, -1, -1])
    default = overlong_reward([""], [{}], completion_lengths=[120], max_completion_length=128)  # cache = 32
    assert default[0] == pytest.approx(-24 / 32)
    with pytest.raises(ValueError, match="completion_lengths"):
        overlong_reward([""], [{}])


def test_empty_batch():
    for fn in (format_reward, accuracy_reward, mcq_reward, count_reward, iou_reward):
        _check_array(fn([], []), 0)
