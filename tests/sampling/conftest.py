import pytest

from tests import hf_tiny


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(transformers model, jaxr1 fp32 model loaded from its saved directory) for a tiny random config."""
    from jaxr1.models import qwen2_5_vl
    cfg = hf_tiny.tiny_hf_config()
    model = hf_tiny.make_hf_model(cfg, seed=0)
    path = tmp_path_factory.mktemp("hf_sampling")
    model.save_pretrained(path)
    return model, qwen2_5_vl.load_hf(str(path), dtype="float32")
