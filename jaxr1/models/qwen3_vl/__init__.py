"""Qwen3-VL (dense) in Flax NNX: `load_hf`, `save_hf`, the model, and its host-side input preparation."""
from jaxr1.models.hf_files import CheckpointError
from jaxr1.models.inputs import ModelInputs
from jaxr1.models.qwen2_5_vl.config import ConfigError
from jaxr1.models.qwen3_vl.config import ModelConfig, TextConfig, VisionConfig
from jaxr1.models.qwen3_vl.model import Qwen3VL, VisionInputs, prepare_inputs
from jaxr1.models.qwen3_vl.params import load_hf, save_hf

__all__ = ["ConfigError", "CheckpointError", "ModelConfig", "TextConfig", "VisionConfig", "ModelInputs",
           "VisionInputs", "Qwen3VL", "prepare_inputs", "load_hf", "save_hf"]
