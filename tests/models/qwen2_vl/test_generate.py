"""jaxr1.sampling.generate drives Qwen2-VL unchanged: greedy tokens equal transformers' generate(do_sample=False).

The cases are Qwen2.5-VL's (tests/sampling/test_greedy_parity.py), run on a Qwen2-VL pair: a left-padded
text batch of mixed lengths with an early EOS, and one- and two-image rows under both decode layer loops."""
import pytest

from tests.models.qwen2_vl.tiny import make_qwen2_vl_model, tiny_qwen2_vl_config
from tests.sampling import test_greedy_parity as cases


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # Untied, seed 1: its greedy continuations vary from step to step (seed 0's, and tied models', repeat
    # one token, which would leave the early-EOS case nothing to pick and the comparison little to check).
    from jaxr1.models import qwen2_vl
    hf_model = make_qwen2_vl_model(tiny_qwen2_vl_config(), seed=1)
    path = tmp_path_factory.mktemp("qwen2_vl_generate")
    hf_model.save_pretrained(path)
    return hf_model, qwen2_vl.load_hf(str(path), dtype="float32")


def test_greedy_text_left_padded_with_early_eos(pair):
    cases.test_text_mixed_lengths_left_padded_with_early_eos(pair)


@pytest.mark.parametrize("layer_loop", ["unroll", "scan"])
def test_greedy_one_and_two_images(pair, layer_loop):
    cases.test_one_and_two_images(pair, layer_loop)
