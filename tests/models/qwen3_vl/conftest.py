import pytest

from tests.models.parity import make_pair
from tests.models.qwen3_vl import tiny


@pytest.fixture(scope="session", params=["untied", "tied"])
def hf_pair(request, tmp_path_factory):
    """(transformers model, saved dir, jaxr1 fp32 model) for a tiny random Qwen3-VL, tied or untied lm_head."""
    from jaxr1.models import qwen3_vl
    return make_pair(request, tmp_path_factory, tiny.tiny_hf_config, tiny.make_hf_model, qwen3_vl.load_hf, "qwen3_vl")
