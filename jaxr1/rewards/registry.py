"""Reward functions by name, user plugins as 'module.path:function', and weights from config."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Mapping, Sequence

from jaxr1.rewards import functions

RewardFn = Callable[..., Any]

REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "format": functions.format_reward,
    "accuracy": functions.accuracy_reward,
    "mcq": functions.mcq_reward,
    "count": functions.count_reward,
    "iou": functions.iou_reward,
    "overlong": functions.overlong_reward,
}

# Functions cheap and safe enough to run in the scorer's thread (regex or arithmetic only).
# Everything else - verification and any plugin - runs in the worker pool under a timeout.
INLINE_FUNCTIONS = {"format", "count", "iou", "overlong"}


class RewardFunctionError(LookupError):
    """A reward name or plugin path that does not resolve to a callable."""


def register(name: str, fn: RewardFn | None = None, *, inline: bool = False):
    """Add a reward function by name (usable as a decorator). Pool workers see only
    functions registered at import time of an importable module; prefer plugin paths."""

    def add(f: RewardFn) -> RewardFn:
        REWARD_FUNCTIONS[name] = f
        if inline:
            INLINE_FUNCTIONS.add(name)
        return f

    return add(fn) if fn is not None else add


def _load_plugin(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RewardFunctionError(f"reward plugin {spec!r}: expected 'module.path:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardFunctionError(
            f"reward plugin {spec!r}: cannot import module {module_name!r} ({e}); "
            "is it installed or on PYTHONPATH?"
        ) from e
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            close = difflib.get_close_matches(part, public, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RewardFunctionError(f"reward plugin {spec!r}: {module_name!r} has no {attr!r}{hint}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardFunctionError(f"reward plugin {spec!r} is not callable")
    return fn


def get_reward_function(name: str) -> RewardFn:
    """A built-in by name ('accuracy') or a plugin ('my_pkg.rewards:length_penalty')."""
    if ":" in name:
        return _load_plugin(name)
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    close = difflib.get_close_matches(name, list(REWARD_FUNCTIONS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RewardFunctionError(
        f"unknown reward function {name!r}{hint} (built-ins: {', '.join(sorted(REWARD_FUNCTIONS))}; "
        "plugins are written 'module.path:function')"
    )


RewardSpec = tuple[str, float, dict]


def parse_reward_specs(config: Any) -> list[RewardSpec]:
    """Normalize the ways a config can name rewards into [(name, weight, kwargs)].

    Accepted: {"accuracy": 1.0, "format": 0.5}; {"iou": {"weight": 1, "threshold": 0.7}};
    [("accuracy", 1.0, {}), ...]; [{"name": "iou", "weight": 1.0, "kwargs": {...}}, "format"];
    objects with .name/.weight/.kwargs (the config's RewardSpec).
    Every name is resolved now, so a typo fails at start-up rather than at the first batch.
    """
    specs: list[RewardSpec] = []
    if isinstance(config, Mapping):
        for name, value in config.items():
            if isinstance(value, Mapping):
                kwargs = dict(value)
                weight = float(kwargs.pop("weight", 1.0))
                kwargs.update(kwargs.pop("kwargs", {}) or {})
                specs.append((str(name), weight, kwargs))
            else:
                specs.append((str(name), float(value), {}))
    elif isinstance(config, Sequence) and not isinstance(config, str):
        for item in config:
            if isinstance(item, str):
                specs.append((item, 1.0, {}))
            elif hasattr(item, "name") and hasattr(item, "weight"):  # jaxr1.config.RewardSpec
                specs.append((str(item.name), float(item.weight), dict(getattr(item, "kwargs", None) or {})))
            elif isinstance(item, Mapping):
                specs.append((str(item["name"]), float(item.get("weight", 1.0)), dict(item.get("kwargs") or {})))
            else:
                name, weight, *rest = item
                specs.append((str(name), float(weight), dict(rest[0]) if rest else {}))
    else:
        raise TypeError(f"reward config must be a mapping or a list, got {type(config).__name__}")
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"reward functions listed twice: {names}")
    for name, _, _ in specs:
        get_reward_function(name)
    return specs


def reward_specs(rewards_cfg, only: tuple[str, ...] | None = None) -> list[RewardSpec]:
    """(name, weight, kwargs) for the scorer from the config's `rewards`; the verifier's numeric policy goes to
    `accuracy` and `mcq` unless their kwargs set their own. `only=("accuracy",)` gives held-out accuracy
    (always the verifier's, weight 1)."""
    specs = [(r.name, r.weight, dict(r.kwargs)) for r in rewards_cfg.functions] if only is None else \
        [(name, 1.0, {}) for name in only]
    policy = {"numeric_match": rewards_cfg.numeric_match, "min_sig_digits": rewards_cfg.min_sig_digits}
    return [(n, w, {**policy, **kw} if n in ("accuracy", "mcq") else kw) for n, w, kw in specs]
