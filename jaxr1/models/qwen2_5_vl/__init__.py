"""Qwen2.5-VL in Flax NNX: `load_hf`, `save_hf`, the model, and its host-side input preparation."""
from jaxr1.models.hf_files import CheckpointError
from jaxr1.models.inputs import ModelInputs
from jaxr1.models.qwen2_5_vl.config import ConfigError, ModelConfig, TextConfig, VisionConfig
from jaxr1.models.qwen2_5_vl.model import Qwen2_5_VL, VisionInputs, prepare_inputs
from jaxr1.models.qwen2_5_vl.params import load_hf, save_hf

__all__ = ["ConfigError", "CheckpointError", "ModelConfig", "TextConfig", "VisionConfig", "ModelInputs",
           "VisionInputs", "Qwen2_5_VL", "prepare_inputs", "load_hf", "save_hf"]
