"""The model seam: load_hf dispatches on model_type, the family-neutral save/convert/checkpoint paths serve
every family, and a Qwen2-VL run trains end to end through the same code as Qwen2.5-VL."""
import json
import os

import numpy as np
import pytest

from jaxr1.assets import TINY_FAMILY_DIRS, TINY_MODEL_DIR
from jaxr1.models import load_hf, model_type, save_hf

TINY = {"qwen2_5_vl": TINY_MODEL_DIR, "qwen2_vl": TINY_FAMILY_DIRS["tiny-qwen2-vl"],
        "qwen3_vl": TINY_FAMILY_DIRS["tiny-qwen3-vl"]}


def tensors(d):
    from safetensors.numpy import load_file
    return load_file(os.path.join(d, "model.safetensors"))


@pytest.mark.parametrize("family", sorted(TINY))
def test_load_dispatches_and_save_round_trips(family, tmp_path):
    assert model_type(TINY[family]) == family
    model = load_hf(TINY[family])
    assert type(model).__module__.startswith(f"jaxr1.models.{family}.")
    save_hf(model, str(tmp_path), source_dir=TINY[family])
    assert json.load(open(tmp_path / "config.json"))["model_type"] == family
    a, b = tensors(TINY[family]), tensors(str(tmp_path))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_convert_cli_both_ways(family, tmp_path):
    from jaxr1.checkpointing import load_model
    from jaxr1.convert import main
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    assert main(["from-hf", TINY[family], ckpt]) == 0
    assert type(load_model(ckpt)).__module__.startswith(f"jaxr1.models.{family}.")
    assert main(["to-hf", ckpt, out]) == 0
    a, b = tensors(TINY[family]), tensors(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_unknown_model_type_is_a_user_error(tmp_path):
    from jaxr1.errors import UserError
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UserError, match="model_type 'llava' is not supported; supported: qwen2_5_vl, qwen2_vl"):
        load_hf(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_family_trains_resumes_and_evaluates(tmp_path, family, capsys):
    """Per family, through the same code as Qwen2.5-VL: two steps with no sampler/trainer gap, a rerun with
    steps=3 that resumes from the step-2 checkpoint, and `jaxr1.eval` of the run directory."""
    from jaxr1.eval import main as eval_main
    from jaxr1.train import main
    out = str(tmp_path / "run")
    args = [f"model.path=tiny-{family.replace('_', '-')}", "data.batch_size=2", "rl.num_generations=4",
            "rl.max_completion_length=8", "data.num_eval=4", "eval.batch_size=4", f"output_dir={out}"]
    assert main([*args, "steps=2"]) == 0
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    gaps = [r["rl/sampler_trainer_logprob_gap_max"] for r in rows if "rl/sampler_trainer_logprob_gap_max" in r]
    assert len(gaps) == 2 and max(gaps) < 1e-4     # fp32: sampler and trainer compute the same log-probs
    assert json.load(open(os.path.join(out, "hf", "config.json")))["model_type"] == family

    assert main([*args, "steps=3"]) == 0           # resume=auto: continues the compatible run from step 2
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    trained = [r["step"] for r in rows if "reward/total_mean" in r]
    assert trained == [1, 2, 3], trained           # steps 1-2 not trained again
    capsys.readouterr()
    assert eval_main(["--model", out]) == 0
    report = capsys.readouterr().out
    after = [json.loads(l)["correct"] for l in open(os.path.join(out, "eval_after.jsonl"))]
    assert json.loads(report[report.index("{"):])["accuracy"] == pytest.approx(np.mean(after))
