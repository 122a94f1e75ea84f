import numpy as np
import pytest

from tests import hf_tiny


@pytest.fixture(scope="session", params=["untied", "tied"])
def hf_pair(request, tmp_path_factory):
    """(transformers model, saved dir, jaxr1 fp32 model) for a tiny random config, tied or untied lm_head."""
    from jaxr1.models import qwen2_5_vl
    cfg = hf_tiny.tiny_hf_config(tie=request.param == "tied")
    model = hf_tiny.make_hf_model(cfg, seed=1 if request.param == "tied" else 0)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(path)
    return model, str(path), qwen2_5_vl.load_hf(str(path), dtype="float32")
