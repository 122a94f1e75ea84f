"""`--dry_run` compiles the real-size configs on forced host devices and reports whether they fit."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dry_run(*args):
    r = subprocess.run([sys.executable, "-m", "jaxr1.train", "--dry_run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    peak = re.search(r"peak \(resident \+ largest phase\)\s+([\d.]+)", r.stdout)
    assert peak, r.stdout[-2000:] + r.stderr[-3000:]
    return r.returncode, float(peak.group(1)), r.stdout


@pytest.mark.slow
def test_7b_without_sharding_on_one_device_does_not_fit():
    rc, peak, out = _dry_run("--config", "configs/qwen2_5_vl_7b_multimodal_open_r1.yaml", "parallel.fsdp=1",
                             "parallel.data=1", "data.batch_size=1", "rl.micro_batch_prompts=1",
                             "rl.max_completion_length=64", "data.max_prompt_length=256", "data.max_pixels=50176")
    print(out)
    assert rc == 3 and "does NOT fit" in out and peak > 80


def _target_run(config, target, *extra):
    rc, peak, out = _dry_run("--config", config, "--target", target, *extra)
    print(out)
    return rc, peak, out


@pytest.mark.slow
def test_3b_config_compiles_for_h100_with_cudnn_and_fits():
    rc, peak, out = _target_run("configs/qwen2_5_vl_3b_geoqa.yaml", "h100")
    assert rc == 0 and "dry run for h100" in out and "verdict: fits" in out and "limit 73 GiB" in out
    assert peak < 73 and "3.755B parameters" in out and "'fsdp': 8" in out
    assert "'text': 'cudnn'" in out and "fused kernel in the train step: True" in out
    assert "micro-batch rows per device: 2 of 16" in out and "decode loop body collectives: none" in out
    assert re.search(r"packed train step \(completions of max/4 tokens, \d+ rows x \d+[^)]*\): .* fused kernel: True", out)


@pytest.mark.slow
def test_7b_v5p32_config_compiles_for_tpu_with_splash_and_fits():
    rc, peak, out = _target_run("configs/qwen2_5_vl_7b_multimodal_open_r1_v5p32.yaml", "tpu-v5p")
    assert rc == 0 and "dry run for tpu-v5p" in out and "verdict: fits" in out
    assert "'text': 'splash'" in out and "fused kernel in the train step: True" in out
    assert "(replicated" not in out and "decode loop body collectives: none" in out
    assert re.search(r"packed train step \(completions of max/4 tokens, \d+ rows x \d+[^)]*\): .* fused kernel: True", out)


@pytest.mark.slow
def test_qwen3_vl_4b_recipe_compiles_for_h100_and_fits():
    rc, peak, out = _target_run("configs/qwen3_vl_4b_clevr_count.yaml", "h100")
    assert rc == 0 and "verdict: fits" in out and "4.438B parameters" in out
    assert "'text': 'cudnn'" in out and "fused kernel in the train step: True" in out


@pytest.mark.slow
@pytest.mark.parametrize("config,target,kernel", [("configs/qwen2_5_vl_7b_lora_8xh100.yaml", "h100", "cudnn"),
                                                  ("configs/qwen2_5_vl_7b_lora_v5p8.yaml", "tpu-v5p", "splash")])
def test_7b_lora_recipes_compile_for_their_target_and_fit(config, target, kernel):
    rc, peak, out = _target_run(config, target)
    assert rc == 0 and f"dry run for {target}" in out and "verdict: fits" in out
    assert "LoRA rank 64: 161.5M trainable" in out and f"'text': '{kernel}'" in out
    assert "fused kernel in the train step: True" in out and "decode loop body collectives: none" in out
    mem = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^  (\D+?)\s+([\d.]+)$", out, re.M)}
    # adapters (fp32) and their Adam moments are ~2% of the base; the base is stored once, in bf16
    assert mem["LoRA adapters (master)"] < 0.3 * mem["frozen base (compute dtype)"]
    assert mem["reference model"] == mem["LoRA adapters (master)"]


# The hardware each shipped config's header names, as a --target: every config is compiled for it by a test
# in this file (the three below in test_config_compiles_for_its_target, the others in their own tests).
TARGETS = {
    "configs/qwen2_5_vl_3b_clevr_count.yaml": "h100",
    "configs/qwen2_5_vl_3b_geoqa.yaml": "h100",
    "configs/qwen2_5_vl_7b_lora_8xh100.yaml": "h100",
    "configs/qwen2_5_vl_7b_lora_v5p8.yaml": "tpu-v5p",
    "configs/qwen2_5_vl_7b_multimodal_open_r1.yaml": "h100",
    "configs/qwen2_5_vl_7b_multimodal_open_r1_v5p32.yaml": "tpu-v5p",
    "configs/qwen2_vl_2b_multimodal_open_r1.yaml": "h100",
    "configs/qwen3_vl_4b_clevr_count.yaml": "h100",
}


def test_every_shipped_config_has_a_target():
    shipped = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert shipped == set(TARGETS), shipped ^ set(TARGETS)
    for config, target in TARGETS.items():
        with open(os.path.join(ROOT, config)) as f:
            header = "".join(line for line in f if line.startswith("#"))
        assert ("v5p" in header) == (target == "tpu-v5p") and (target != "h100" or "H100" in header), config


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/qwen2_5_vl_3b_clevr_count.yaml",
                                    "configs/qwen2_5_vl_7b_multimodal_open_r1.yaml",
                                    "configs/qwen2_vl_2b_multimodal_open_r1.yaml"])
def test_config_compiles_for_its_target(config):
    target = TARGETS[config]
    rc, peak, out = _target_run(config, target)
    assert rc == 0 and f"dry run for {target}" in out and "verdict: fits" in out
    assert "'text': 'cudnn'" in out and "fused kernel in the train step: True" in out
    assert "(replicated" not in out and "decode loop body collectives: none" in out
    assert "'fsdp': 8" in out and PARAMS[config] in out


# Parameter counts that the dry run must report (the models' published sizes).
PARAMS = {"configs/qwen2_5_vl_3b_clevr_count.yaml": "3.755B parameters",
          "configs/qwen2_5_vl_7b_multimodal_open_r1.yaml": "8.292B parameters",
          "configs/qwen2_vl_2b_multimodal_open_r1.yaml": "2.209B parameters"}
