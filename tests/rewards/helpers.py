"""Module-level task functions for pool tests (spawned workers import them by name)."""

import time

import numpy as np


def square(x):
    return x * x


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def hang_forever(*_):
    while True:
        time.sleep(0.05)


def boom(*_):
    raise RuntimeError("boom")


def hanging_reward(completions, examples, **ctx):
    """A plugin that hangs on completions containing 'hang' and scores 1 otherwise."""
    for c in completions:
        if "hang" in c:
            hang_forever()
    return np.ones(len(completions), np.float32)


def positional_only_reward(completions, examples):
    """A plugin without **ctx: the scorer must not pass ctx keys it does not accept."""
    return np.full(len(completions), 0.25, np.float32)
