"""Qwen2-VL for conditional generation: the Qwen2-VL vision tower + the shared Qwen2 text decoder.

Everything but the vision tower is Qwen2.5-VL's: the same `TextDecoder` (M-RoPE), the same host-side
`prepare_inputs` (transformers' `get_rope_index` is the same for still images; the slot layout degenerates
to processor order since `VisionConfig.window_size` is None) and the same `embed` / `encode_images` /
`hidden_states` / `forward` / `__call__`, inherited, so the sampler and the trainer drive it unchanged.
"""
from __future__ import annotations

from jaxr1.models.qwen2_5_vl.model import Qwen2_5_VL
from jaxr1.models.qwen2_vl.vision import VisionTower


class Qwen2_VL(Qwen2_5_VL):
    """Attributes as Qwen2_5_VL: `config`, `visual` (a Qwen2-VL VisionTower), `language_model` (TextDecoder)."""
    vision_tower = VisionTower
