"""Registry by name, plugins as module.path:function with clear errors, specs from config."""

from dataclasses import dataclass, field

import pytest

from jaxr1.rewards import REWARD_FUNCTIONS, RewardFunctionError, get_reward_function, parse_reward_specs


def test_builtins():
    assert {"format", "accuracy", "mcq", "count", "iou", "overlong"} <= set(REWARD_FUNCTIONS)
    assert get_reward_function("accuracy") is REWARD_FUNCTIONS["accuracy"]


def test_plugin_loads():
    fn = get_reward_function("tests.rewards.helpers:positional_only_reward")
    assert fn(["a", "b"], [{}, {}]).tolist() == [0.25, 0.25]


@pytest.mark.parametrize(
    "name,message",
    [
        ("acuracy", "did you mean accuracy"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("tests.rewards.helpers:positional_only_rewrd", "did you mean positional_only_reward"),
        ("tests.rewards.helpers:", "expected 'module.path:function'"),
    ],
)
def test_clear_errors(name, message):
    with pytest.raises(RewardFunctionError, match=message):
        get_reward_function(name)


@dataclass
class _Spec:  # the shape of jaxr1.config.RewardSpec
    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


def test_parse_reward_specs_forms():
    expected = [("accuracy", 1.0, {}), ("iou", 2.0, {"threshold": 0.7})]
    assert parse_reward_specs({"accuracy": 1.0, "iou": {"weight": 2.0, "threshold": 0.7}}) == expected
    assert parse_reward_specs([("accuracy", 1.0), ("iou", 2.0, {"threshold": 0.7})]) == expected
    as_dicts = [{"name": "accuracy"}, {"name": "iou", "weight": 2, "kwargs": {"threshold": 0.7}}]
    assert parse_reward_specs(as_dicts) == expected
    assert parse_reward_specs([_Spec("accuracy"), _Spec("iou", 2.0, {"threshold": 0.7})]) == expected
    assert parse_reward_specs(["format"]) == [("format", 1.0, {})]
    with pytest.raises(RewardFunctionError):
        parse_reward_specs({"formt": 1.0})
    with pytest.raises(ValueError, match="twice"):
        parse_reward_specs(["format", "format"])
