"""model.attention reaches every full-sequence attention call: the splash kernel (Pallas, interpret mode on
this CPU) gives the same logits and gradients as the XLA path, for each family, with an image and left
padding; an impossible choice fails at start with the key to change."""
import numpy as np
import pytest

from tests import hf_tiny


def _hf_config(family):
    # Head dims of 64 (text and vision) so splash can serve both towers.
    if family == "qwen2_5_vl":
        cfg = hf_tiny.tiny_hf_config(layers=2, depth=2)
        patch = 14
    elif family == "qwen2_vl":
        from tests.models.qwen2_vl.tiny import tiny_qwen2_vl_config
        cfg, patch = tiny_qwen2_vl_config(layers=2, depth=2), 14
    else:
        from tests.models.qwen3_vl.tiny import tiny_hf_config
        cfg, patch = tiny_hf_config(layers=2, depth=2, deepstack=(0,)), 16
    t, v = cfg.text_config, cfg.vision_config
    t.hidden_size, t.num_attention_heads, t.num_key_value_heads = 128, 2, 1
    if family == "qwen3_vl":
        t.head_dim = 64
        t.rope_parameters["mrope_section"] = [12, 10, 10]
    else:
        t.rope_parameters["mrope_section"] = [8, 12, 12]
    v.num_heads = 2
    v.hidden_size = v.embed_dim = 128
    if family != "qwen2_vl":
        v.out_hidden_size = 128
    cfg.text_config.hidden_size = 128
    return cfg, patch


def _model(family, tmp_path):
    from flax import nnx

    from jaxr1.models import build, config_from_dir
    hf_cfg, patch = _hf_config(family)
    hf_cfg.save_pretrained(tmp_path)
    cfg = config_from_dir(str(tmp_path))
    assert cfg.text.head_dim == 64 and cfg.vision.head_dim == 64, (cfg.text.head_dim, cfg.vision.head_dim)
    return build(cfg, rngs=nnx.Rngs(0)), patch


def _inputs(model, patch):
    grids = [(1, 4, 6)]
    pv, grid = hf_tiny.random_image_inputs(grids, patch=patch)
    rows = [hf_tiny.prompt_ids(9, grids, seed=1), hf_tiny.prompt_ids(4, grids, seed=2)[:-3]]
    ids, mask = hf_tiny.left_pad(rows)
    pv2, grid2 = np.concatenate([pv, pv]), np.concatenate([grid, grid])
    inputs, _ = model.prepare_inputs(model.config, ids, mask, pv2, grid2)
    return inputs, mask


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_splash_equals_xla_logits_and_gradients(family, tmp_path):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxr1.models import set_attention
    model, patch = _model(family, tmp_path)
    inputs, mask = _inputs(model, patch)
    valid = jnp.asarray(mask, bool)
    weights = jax.random.normal(jax.random.key(1), (*mask.shape, model.config.text.vocab_size))

    def run(impl):
        chosen = set_attention(model, impl, platform="cpu", allow_interpret=True)
        graphdef, params = nnx.split(model, nnx.Param)

        @jax.jit
        def f(params):
            logits = nnx.merge(graphdef, params).forward(inputs)
            return jnp.sum(jnp.where(valid[..., None], logits * weights, 0.0)), logits
        (_, logits), grads = jax.value_and_grad(f, has_aux=True)(params)
        return chosen, np.asarray(logits), grads

    x_chosen, x_logits, x_grads = run("xla")
    s_chosen, s_logits, s_grads = run("splash")
    assert x_chosen == {"text": "xla", "vision": "xla", "decode": "shared_prefix"}
    assert s_chosen == {"text": "splash", "vision": "splash", "decode": "shared_prefix"}
    m = np.asarray(mask, bool)
    diff = np.abs(s_logits - x_logits)[m].max()
    assert diff < 2e-4, f"max |logit diff| splash vs xla {diff:.2e}"
    flat_x = dict(jax.tree_util.tree_flatten_with_path(x_grads)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(s_grads)[0]:
        ref = np.asarray(flat_x[path])
        err = np.abs(np.asarray(g) - ref).max() / (np.abs(ref).max() + 1e-6)
        assert err < 1e-3, (jax.tree_util.keystr(path), err)


def test_impossible_attention_is_a_start_error(tmp_path):
    from jaxr1.errors import UserError
    from jaxr1.models import set_attention
    model, _ = _model("qwen2_5_vl", tmp_path)
    with pytest.raises(UserError, match="model.attention=cudnn needs an NVIDIA GPU"):
        set_attention(model, "cudnn", platform="cpu")
    with pytest.raises(UserError, match="model.attention=cudnn needs bfloat16"):
        set_attention(model, "cudnn", platform="gpu", dtype="float32")
    with pytest.raises(UserError, match="model.attention=splash needs a TPU"):
        set_attention(model, "splash", platform="cpu")
    assert set_attention(model, "auto", platform="cpu")["text"] == "xla"
    assert set_attention(model, "auto", platform="gpu", dtype="bfloat16") == {
        "text": "cudnn", "vision": "cudnn", "decode": "shared_prefix"}   # the window blocks (see test_vision_windows)
    assert set_attention(model, "auto", platform="tpu", dtype="bfloat16")["vision"] == "splash"
