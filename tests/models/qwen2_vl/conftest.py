import pytest

from tests.models.qwen2_vl.tiny import make_qwen2_vl_model, tiny_qwen2_vl_config


@pytest.fixture(scope="session", params=["untied", "tied"])
def qwen2_vl_pair(request, tmp_path_factory):
    """(transformers Qwen2-VL, its saved dir, jaxr1 fp32 model loaded from it), tied or untied lm_head."""
    from jaxr1.models import qwen2_vl
    cfg = tiny_qwen2_vl_config(tie=request.param == "tied")
    model = make_qwen2_vl_model(cfg, seed=1 if request.param == "tied" else 0)
    path = tmp_path_factory.mktemp(f"qwen2_vl_{request.param}")
    model.save_pretrained(path)
    return model, str(path), qwen2_vl.load_hf(str(path), dtype="float32")
