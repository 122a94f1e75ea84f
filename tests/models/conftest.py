import pytest

from tests import hf_tiny
from tests.models.parity import make_pair


@pytest.fixture(scope="session", params=["untied", "tied"])
def hf_pair(request, tmp_path_factory):
    """(transformers model, saved dir, jaxr1 fp32 model) for a tiny random config, tied or untied lm_head."""
    from jaxr1.models import qwen2_5_vl
    return make_pair(request, tmp_path_factory, hf_tiny.tiny_hf_config, hf_tiny.make_hf_model, qwen2_5_vl.load_hf, "hf")
