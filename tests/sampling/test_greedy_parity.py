"""Greedy decoding equals transformers' generate(do_sample=False) token for token (fp32, tiny random model)."""
import numpy as np
import pytest

from jaxr1.sampling import STOP_EOS, STOP_LENGTH, generate
from tests.sampling.prompts import hf_generate, image_batch, text_batch


def _assert_same(ours, hf, name):
    ours = np.asarray(ours.tokens)[:, :hf.shape[1]]
    bad = np.argwhere(ours != hf)
    assert not len(bad), f"{name}: first mismatch at (row, step) {tuple(bad[0])}: ours {ours[bad[0][0]]}, " \
                         f"transformers {hf[bad[0][0]]}"


def test_text_mixed_lengths_left_padded_with_early_eos(tiny_pair):
    hf_model, model = tiny_pair
    batch = text_batch(lengths=(5, 9, 14))
    free = hf_generate(hf_model, batch, max_new_tokens=12, eos_token_ids=())
    # Pick an EOS id that row 0 emits early (for the first time) and some other row never emits.
    pick = next(((j, int(free[0, j])) for j in range(1, 6) if free[0, j] not in free[0, :j]
                 and any(free[0, j] not in free[r] for r in range(1, len(free)))), None)
    assert pick is not None, f"no usable early-EOS token in row 0's continuation {free[0]}"
    j, eos = pick
    hf = hf_generate(hf_model, batch, max_new_tokens=12, eos_token_ids=(eos,))
    out = generate(model, **batch, max_new_tokens=12, temperature=0.0, eos_token_ids=(eos,), pad_token_id=0)
    _assert_same(out, hf, "text, left padded, early EOS")
    lengths, stop = np.asarray(out.lengths), np.asarray(out.stop_reason)
    assert lengths[0] == j + 1 and stop[0] == STOP_EOS
    assert (np.asarray(out.tokens)[0, j + 1:] == 0).all(), "tokens after EOS must be pad"
    assert (np.asarray(out.logprobs)[0, j + 1:] == 0).all(), "logprobs after EOS must be 0"
    runs_on = [r for r in range(1, 3) if eos not in free[r]]
    assert (lengths[runs_on] == 12).all() and (stop[runs_on] == STOP_LENGTH).all()


@pytest.mark.parametrize("layer_loop", ["unroll", "scan"])
def test_one_and_two_images(tiny_pair, layer_loop):
    hf_model, model = tiny_pair
    batch = image_batch()
    hf = hf_generate(hf_model, batch, max_new_tokens=10, eos_token_ids=())
    out = generate(model, **batch, max_new_tokens=10, temperature=0.0, eos_token_ids=(), layer_loop=layer_loop)
    assert hf.shape == (2, 10)
    _assert_same(out, hf, f"images (row 0 one image, row 1 two), layer_loop={layer_loop}")
    assert (np.asarray(out.lengths) == 10).all() and (np.asarray(out.stop_reason) == STOP_LENGTH).all()
