"""LoRA adapters (jaxr1.models.lora) and PEFT adapter directories (jaxr1.models.peft), per family: the unmerged
forward equals the merged model's, with an image and left padding; the PEFT export loads in peft +
transformers with logits equal to jaxr1's merged model; `convert merge-lora` writes that merged model."""
import numpy as np
import pytest

from jaxr1.assets import TINY_FAMILY_DIRS, TINY_MODEL_DIR

TINY = {"qwen2_5_vl": TINY_MODEL_DIR, "qwen2_vl": TINY_FAMILY_DIRS["tiny-qwen2-vl"],
        "qwen3_vl": TINY_FAMILY_DIRS["tiny-qwen3-vl"]}
EVERYWHERE = r"(language_model/layers|visual/blocks)/\w+_kernel$"


def adapted(family, target=EVERYWHERE, seed=1):
    """The tiny model of `family` with random (non-zero) adapters on every layer and block kernel."""
    import jax
    from flax import nnx

    from jaxr1 import models
    from jaxr1.models import lora
    base = models.load_hf(TINY[family])
    model = lora.add_lora(base, rank=4, alpha=8, target=target)
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    nnx.update(model, jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype),
                                   lora.adapter_state(model)))
    return base, model


def image_batch(cfg):
    """Two prompts, one 4x4-patch image each, the second left padded: ids, mask, pixel_values, grids."""
    rng = np.random.default_rng(0)
    n_img = 16 // cfg.vision.spatial_merge_size ** 2
    rows = []
    for text in (7, 3):
        ids = list(rng.integers(10, 500, text)) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + \
            [cfg.vision_start_token_id + 1] + list(rng.integers(10, 500, 4))
        rows.append(ids)
    t = max(map(len, rows))
    ids, mask = np.zeros((2, t), np.int64), np.zeros((2, t), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    pv = rng.standard_normal((32, cfg.vision.patch_dim)).astype(np.float32)
    return ids, mask, pv, np.array([[1, 4, 4], [1, 4, 4]])


@pytest.mark.parametrize("family", sorted(TINY))
def test_unmerged_adapters_equal_the_merged_model(family):
    from jaxr1.models import lora
    base, model = adapted(family)
    merged = lora.merge_adapters(model)
    assert not lora.has_adapters(merged) and not lora.has_adapters(base)   # copies: the inputs are untouched
    # text q k v o gate up down; vision qkv proj + the MLP (Qwen2.5-VL: gate up down, else fc1 fc2)
    assert len(lora.adapted_paths(model)) == 7 + 2 + (3 if family == "qwen2_5_vl" else 2)
    ids, mask, pv, grids = image_batch(model.config)
    out, ref, plain = (np.asarray(m(ids, mask, pv, grids)) for m in (model, merged, base))
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=2e-5, rtol=1e-5)
    assert np.abs(out[valid] - plain[valid]).max() > 1e-2    # the adapters are not a no-op


@pytest.mark.parametrize("family", sorted(TINY))
def test_sampler_applies_adapters_unmerged_as_the_merged_model_decodes(family):
    from jaxr1.models import lora
    from jaxr1.sampling import generate
    _, model = adapted(family)
    ids, mask, pv, grids = image_batch(model.config)
    kw = dict(max_new_tokens=6, temperature=0.0, num_generations=2)
    a = generate(model, ids, mask, pv, grids, **kw)
    b = generate(lora.merge_adapters(model), ids, mask, pv, grids, **kw)
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-4)


@pytest.mark.parametrize("family", sorted(TINY))
def test_peft_adapter_loads_in_peft_with_the_merged_logits(family, tmp_path):
    import peft
    import torch
    import transformers

    from jaxr1.models import lora
    from jaxr1.models.peft import load_peft_adapter, save_peft_adapter
    from tests.hf_tiny import hf_logits
    base, model = adapted(family)
    save_peft_adapter(model, str(tmp_path / "adapter"), base_model=TINY[family])
    hf_cls = getattr(transformers, transformers.AutoConfig.from_pretrained(TINY[family]).architectures[0])
    hf = peft.PeftModel.from_pretrained(hf_cls.from_pretrained(TINY[family], dtype=torch.float32),
                                        str(tmp_path / "adapter")).eval()
    ids, mask, pv, grids = image_batch(model.config)
    ours = np.asarray(lora.merge_adapters(model)(ids, mask, pv, grids))
    theirs = hf_logits(hf, ids, mask, pv, grids)
    valid = mask.astype(bool)
    np.testing.assert_allclose(theirs[valid], ours[valid], atol=1e-4, rtol=1e-4)
    # and back: the directory PEFT reads is the one jaxr1 reads
    back = load_peft_adapter(base, str(tmp_path / "adapter"))
    for path, k in lora.adapters(model).items():
        k2 = lora.adapters(back)[path]
        assert np.array_equal(np.asarray(k.a), np.asarray(k2.a)) and np.array_equal(np.asarray(k.b), np.asarray(k2.b))
        assert k.scale == k2.scale


def test_convert_merge_lora_writes_the_merged_hf_model(tmp_path):
    import torch
    import transformers

    from jaxr1.convert import main
    from jaxr1.models import lora
    from jaxr1.models.peft import save_peft_adapter
    from tests.hf_tiny import hf_logits
    _, model = adapted("qwen2_5_vl", target=r"language_model/layers/(q|v)_kernel$")
    save_peft_adapter(model, str(tmp_path / "adapter"))
    assert main(["merge-lora", TINY_MODEL_DIR, str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "merged"),
                                                                        dtype=torch.float32).eval()
    ids, mask, pv, grids = image_batch(model.config)
    valid = mask.astype(bool)
    np.testing.assert_allclose(hf_logits(hf, ids, mask, pv, grids)[valid],
                               np.asarray(lora.merge_adapters(model)(ids, mask, pv, grids))[valid], atol=1e-4)


def test_bad_targets_and_adapters_are_one_line_errors(tmp_path):
    import json

    from jaxr1 import models
    from jaxr1.errors import UserError
    from jaxr1.models import lora
    from jaxr1.models.peft import load_peft_adapter, save_peft_adapter
    base = models.load_hf(TINY_MODEL_DIR)
    with pytest.raises(UserError, match="matches no kernel"):
        lora.add_lora(base, rank=4, alpha=8, target="nothing_here")
    with pytest.raises(UserError, match="visual/patch_embed, which no layer scan runs"):
        lora.add_lora(base, rank=4, alpha=8, target="patch_embed")
    _, model = adapted("qwen2_5_vl")
    save_peft_adapter(model, str(tmp_path / "a"))
    qwen3 = models.load_hf(TINY["qwen3_vl"])   # other widths: the rank-4 A/B do not fit its kernels
    with pytest.raises(UserError, match="is it the adapter's base model"):
        load_peft_adapter(qwen3, str(tmp_path / "a"))
    cfg = json.load(open(tmp_path / "a" / "adapter_config.json"))
    json.dump({**cfg, "use_dora": True}, open(tmp_path / "a" / "adapter_config.json", "w"))
    with pytest.raises(UserError, match="dora"):
        load_peft_adapter(base, str(tmp_path / "a"))


def test_adapters_shard_like_their_kernels():
    """A [.., in, r] keeps the kernel's input-dim axis, B [.., r, out] its output-dim axis (7B shapes)."""
    import jax
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    from jaxr1.models import build, lora
    from jaxr1.models.qwen2_5_vl import ModelConfig
    from jaxr1.parallel.rules import _path, spec_for

    class FakeMesh:
        shape = {"data": 1, "fsdp": 8, "tensor": 2}
    model = nnx.eval_shape(lambda: lora.add_lora(build(ModelConfig.qwen2_5_vl_7b(), "float32"), rank=64,
                                                 alpha=128, target=EVERYWHERE))
    leaves = jax.tree_util.tree_flatten_with_path(lora.adapter_state(model))[0]
    specs = {_path(k): spec_for(_path(k), x.shape, FakeMesh()) for k, x in leaves}
    assert specs["language_model/layers/q_kernel_lora_a"] == P(None, "fsdp", None)   # W: (None, fsdp, tensor)
    assert specs["language_model/layers/q_kernel_lora_b"] == P(None, None, "tensor")
    assert specs["language_model/layers/down_kernel_lora_a"] == P(None, "tensor", None)  # W: (None, tensor, fsdp)
    assert specs["language_model/layers/down_kernel_lora_b"] == P(None, None, "fsdp")
    assert specs["visual/blocks/qkv_kernel_lora_a"] == P(None, "fsdp", None)
    assert len(specs) == 2 * 12
