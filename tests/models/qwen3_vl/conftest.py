import pytest

from tests.models.qwen3_vl import tiny


@pytest.fixture(scope="session", params=["untied", "tied"])
def hf_pair(request, tmp_path_factory):
    """(transformers model, saved dir, jaxr1 fp32 model) for a tiny random Qwen3-VL, tied or untied lm_head."""
    from jaxr1.models import qwen3_vl
    cfg = tiny.tiny_hf_config(tie=request.param == "tied")
    model = tiny.make_hf_model(cfg, seed=1 if request.param == "tied" else 0)
    path = tmp_path_factory.mktemp(f"qwen3_vl_{request.param}")
    model.save_pretrained(path)
    return model, str(path), qwen3_vl.load_hf(str(path), dtype="float32")
