"""Files shipped with the package: the embedded tiny Qwen2.5-VL checkpoint (see scripts/make_tiny_checkpoint.py)."""
import os

TINY_MODEL_DIR = os.path.join(os.path.dirname(__file__), "tiny_qwen2_5_vl")


def tiny_model_dir() -> str:
    return TINY_MODEL_DIR
