"""Files shipped with the package: the embedded tiny Qwen2.5-VL checkpoint (see scripts/make_tiny_checkpoint.py)."""
import os

TINY_MODEL_DIR = os.path.join(os.path.dirname(__file__), "tiny_qwen2_5_vl")


def tiny_model_dir() -> str:
    return TINY_MODEL_DIR

# The same model after a short SFT warm start on synthetic counting (scripts/make_tiny_sft.py): it knows the
# <think>/<answer> format and counts only partly right; the embedded default trains it further with GRPO.
TINY_SFT_MODEL_DIR = os.path.join(os.path.dirname(__file__), "tiny_qwen2_5_vl_sft")

# The config `python -m jaxr1.train` runs when no --config is given: GRPO on the tiny SFT model, 2-core CPU.
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "default.yaml")

# Tiny random checkpoints of the other families (scripts/make_tiny_checkpoint.py --family qwen2_vl,
# scripts/make_tiny_qwen3_vl.py): model.path=tiny-qwen2-vl / tiny-qwen3-vl.
TINY_FAMILY_DIRS = {"tiny-qwen2-vl": os.path.join(os.path.dirname(__file__), "tiny_qwen2_vl"),
                    "tiny-qwen3-vl": os.path.join(os.path.dirname(__file__), "tiny_qwen3_vl")}
