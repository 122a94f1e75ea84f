import pytest

from tests.models.parity import make_pair
from tests.models.qwen2_vl.tiny import make_qwen2_vl_model, tiny_qwen2_vl_config


@pytest.fixture(scope="session", params=["untied", "tied"])
def qwen2_vl_pair(request, tmp_path_factory):
    """(transformers Qwen2-VL, its saved dir, jaxr1 fp32 model loaded from it), tied or untied lm_head."""
    from jaxr1.models import qwen2_vl
    return make_pair(request, tmp_path_factory, tiny_qwen2_vl_config, make_qwen2_vl_model, qwen2_vl.load_hf,
                     "qwen2_vl")
