"""A LoRA run from the command line: resume is bit-exact on CPU, checkpoints hold the adapters only, the run
exports a merged HF model and a PEFT adapter directory, and `jaxr1.eval --model RUN` evaluates the adapted
policy (base + the checkpoint's adapters)."""
import json
import os

import numpy as np
import pytest

from tests.train.test_resume import ARGS, hf_tensors, step_rows

pytestmark = pytest.mark.slow
# A constant lr: the default's warmup from lr 0 leaves update 1 without effect (and a cosine over `steps`
# would differ between a 3-step run and a 2-step run resumed to 3).
LORA = ["lora.rank=4", "lora.alpha=8", "optim.lr=1e-2", "optim.schedule=constant", "optim.warmup_steps=0",
        "rl.beta=0.05"]


def train(out, *extra):
    from jaxr1.train import main
    return main([*ARGS, *LORA, f"output_dir={out}", *extra])


def adapter_tensors(run):
    from safetensors.numpy import load_file
    return load_file(os.path.join(run, "adapter", "adapter_model.safetensors"))


def test_lora_run_resumes_bit_exact_and_exports(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert train(a, "steps=3") == 0
    assert train(b, "steps=2") == 0
    assert train(b, "steps=3") == 0                 # resumes from step 2
    ra, rb = step_rows(os.path.join(a, "metrics.jsonl")), step_rows(os.path.join(b, "metrics.jsonl"))
    assert sorted(rb) == [1, 2, 3]
    same = {k for k in ra[3] if not k.startswith(("time/", "throughput/"))}
    assert {k: ra[3][k] for k in same} == {k: rb[3][k] for k in same}
    assert ra[3]["train/kl"] > 0
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta and sorted(ta) == sorted(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    ha, hb = hf_tensors(a), hf_tensors(b)
    assert all(np.array_equal(ha[k], hb[k]) for k in ha)
    cfg = json.load(open(os.path.join(a, "adapter", "adapter_config.json")))
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["peft_type"] == "LORA"
    assert any(k.endswith("layers.0.self_attn.q_proj.lora_A.weight") for k in ta)

    # the training checkpoint holds the adapters (and their optimizer moments) only
    import orbax.checkpoint as ocp
    ckpt = os.path.join(b, "checkpoints", "3", "state")
    params = ocp.PyTreeCheckpointer().metadata(ckpt).item_metadata.tree["params"]
    names = {k for layer in params["language_model"]["layers"] for k in [layer]}
    assert names and all(n.endswith(("_lora_a", "_lora_b")) for n in names), names

    # eval of the run directory (its newest training checkpoint: base + adapters) = the run's own after-eval
    from jaxr1.eval import main as eval_main
    capsys.readouterr()
    answers = str(tmp_path / "answers.jsonl")
    assert eval_main(["--model", b, "--out", answers]) == 0
    report = capsys.readouterr().out
    rows = lambda p: [json.loads(l) for l in open(p)]
    after, before = rows(os.path.join(b, "eval_after.jsonl")), rows(os.path.join(b, "eval_before.jsonl"))
    assert json.loads(report[report.index("{"):])["accuracy"] == pytest.approx(np.mean([r["correct"] for r in after]))
    assert [r["completions"] for r in rows(answers)] == [r["completions"] for r in after]
    assert [r["completions"] for r in before] != [r["completions"] for r in after]   # the adapters changed it
