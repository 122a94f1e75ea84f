"""Qwen2-VL in Flax NNX: `load_hf`, `save_hf`, the model, and its host-side input preparation.

Input preparation and the text decoder are Qwen2.5-VL's (re-exported here); see model.py."""
from jaxr1.models.hf_files import CheckpointError
from jaxr1.models.inputs import ModelInputs
from jaxr1.models.qwen2_5_vl.config import ConfigError, TextConfig
from jaxr1.models.qwen2_5_vl.model import VisionInputs, prepare_inputs
from jaxr1.models.qwen2_vl.config import ModelConfig, VisionConfig
from jaxr1.models.qwen2_vl.model import Qwen2_VL
from jaxr1.models.qwen2_vl.params import load_hf, save_hf

__all__ = ["ConfigError", "CheckpointError", "ModelConfig", "TextConfig", "VisionConfig", "ModelInputs",
           "VisionInputs", "Qwen2_VL", "prepare_inputs", "load_hf", "save_hf"]
