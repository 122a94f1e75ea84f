"""Token ids <-> text beside the tokenizer: which ids end a completion, and completions decoded to text."""
from __future__ import annotations

import numpy as np


def eos_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
           tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    return tuple(sorted(i for i in ids if isinstance(i, int) and i >= 0))


def decode_completions(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return tokenizer.batch_decode([t[:n] for t, n in zip(np.asarray(tokens), np.asarray(lengths))],
                                  skip_special_tokens=True)
