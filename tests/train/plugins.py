"""A user reward plugin (module.path:function), as a config names it; varies across random completions."""
import numpy as np


def distinct_chars(completions, examples, **ctx):
    return np.asarray([len(set(c)) / 10.0 for c in completions], np.float32)
