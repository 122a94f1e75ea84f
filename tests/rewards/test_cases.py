"""The labelled verifier set: every case, category coverage, and true/false balance.

A case may carry "numeric_match" / "min_sig_digits": it is labelled for that policy (the
default policy otherwise; see jaxr1/rewards/verify.py).
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from jaxr1.rewards.verify import verify

CASES_PATH = Path(__file__).parent / "data" / "verifier_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text().splitlines() if line.strip()]
REQUIRED = {
    "extraction", "integers", "decimals", "thousands", "scientific", "fractions", "radicals_pi_powers",
    "expressions", "equations", "intervals", "tuples", "sets", "percent_degrees", "units", "latex_noise",
    "mcq", "mcq_choices", "text", "known_pitfalls", "non_numeric_words", "sentences", "numeric_policy",
}
POLICY_KEYS = ("numeric_match", "min_sig_digits")


def _verify_case(c: dict) -> bool:
    policy = {k: c[k] for k in POLICY_KEYS if k in c}
    return verify(c["prediction"], c["gold"], choices=c.get("choices"), **policy)


def test_set_size_and_coverage():
    assert len(CASES) >= 300
    assert len({c["id"] for c in CASES}) == len(CASES)
    cats = {c["category"] for c in CASES}
    assert REQUIRED <= cats
    for cat in cats:
        labels = Counter(c["expected"] for c in CASES if c["category"] == cat)
        assert labels[True] >= 2 and labels[False] >= 2, (cat, labels)


def test_both_policies_are_labelled():
    modes = Counter((c.get("numeric_match", "exact"), c["expected"]) for c in CASES)
    assert all(modes[(m, e)] >= 5 for m in ("exact", "rounded") for e in (True, False)), modes


def test_every_labelled_case():
    wrong = [
        (c["id"], c["prediction"], c["gold"], c["expected"])
        for c in CASES
        if _verify_case(c) != c["expected"]
    ]
    assert not wrong, f"{len(wrong)} labelled cases disagree: {wrong[:20]}"


@pytest.mark.parametrize(
    "pred,gold,expected",
    [
        # Known false positives of public verifiers must be False here ...
        ("y=2x+1", "y=3x-2", False),
        ("\\frac{1}{2004!}", "\\frac{1}{2006!}", False),
        ("4\\sqrt(2)", "4", False),
        # ... and known misses True.
        ("<answer>3</answer>", "3", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("1.2 \\times 10^3", "1200", True),
    ],
)
def test_known_public_verifier_mistakes(pred, gold, expected):
    assert verify(pred, gold) is expected
    assert verify(gold, pred) is expected  # symmetric for these pairs
