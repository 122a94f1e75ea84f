"""Qwen3-VL (dense) configuration: frozen dataclasses built from an HF `config.json`.

Reads the transformers 5.x layout (nested text_config / vision_config, `rope_parameters`) and the layout of
the published checkpoints (written by transformers 4.57: `rope_scaling` + `rope_theta` inside text_config,
vision_config.model_type "qwen3_vl").
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxr1.models.qwen2_5_vl.config import (VISION_TOKEN_KEYS, ConfigError, FromHFDir, VisionShape,
                                            check_model_type, check_vision_shapes, hf_config_dict, hf_text_config,
                                            hf_vision_config, hf_vision_kwargs)

ARCHITECTURE = "Qwen3VLForConditionalGeneration"


@dataclasses.dataclass(frozen=True)
class VisionConfig(VisionShape):
    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 4096
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @property
    def grid_side(self) -> int:
        """Side of the square learned position-embedding grid (transformers: int(sqrt(n)))."""
        return int(self.num_position_embeddings**0.5)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5000000.0
    # Interleaved M-RoPE: transformers' Qwen3-VL always interleaves (it ignores `mrope_interleaved`).
    mrope_section: tuple[int, ...] = (24, 20, 20)
    hidden_act: str = "silu"
    max_position_embeddings: int = 262144


@dataclasses.dataclass(frozen=True)
class ModelConfig(FromHFDir):
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    pad_token_id: int | None = None

    def __post_init__(self):
        t, v = self.text, self.vision
        if t.num_attention_heads % t.num_key_value_heads:
            raise ConfigError(f"text: heads {t.num_attention_heads} not a multiple of kv heads {t.num_key_value_heads}")
        if 2 * sum(t.mrope_section) > t.head_dim or len(t.mrope_section) != 3:
            raise ConfigError(f"text: mrope_section {t.mrope_section} must be 3 sections within head_dim/2")
        check_vision_shapes(v, t.hidden_size)
        if len(set(v.deepstack_visual_indexes)) != len(v.deepstack_visual_indexes) or \
                any(not 0 <= i < v.depth for i in v.deepstack_visual_indexes):
            raise ConfigError(f"vision: deepstack_visual_indexes {v.deepstack_visual_indexes} must be distinct "
                              f"block indexes < depth {v.depth}")
        if len(v.deepstack_visual_indexes) > t.num_hidden_layers:
            raise ConfigError("vision: more deepstack layers than text layers")

    # Named sizes of the Instruct checkpoints; their config.json files are in tests/models/qwen3_vl/configs/ and
    # the parameter counts (2.13B / 4.44B / 8.77B) are checked against transformers there.
    @classmethod
    def qwen3_vl_2b(cls) -> "ModelConfig":
        return cls(text=TextConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                   num_attention_heads=16, num_key_value_heads=8),
                   vision=_small_vision(2048), tie_word_embeddings=True)

    @classmethod
    def qwen3_vl_4b(cls) -> "ModelConfig":
        return cls(text=TextConfig(hidden_size=2560, intermediate_size=9728), vision=_small_vision(2560),
                   tie_word_embeddings=True)

    @classmethod
    def qwen3_vl_8b(cls) -> "ModelConfig":
        return cls(text=TextConfig(), vision=VisionConfig(), tie_word_embeddings=False)

    # ---- HF config.json <-> ModelConfig ----
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        check_model_type(d, source, "qwen3_vl", ARCHITECTURE, "Qwen3-VL dense")
        td = d.get("text_config")
        vd = d.get("vision_config")
        if not isinstance(td, dict) or not isinstance(vd, dict):
            raise ConfigError(f"{source}: missing 'text_config' or 'vision_config'")
        if td.get("attention_bias"):
            raise ConfigError(f"{source}: text_config.attention_bias=true is not supported (no released Qwen3-VL "
                              f"uses it)")
        rope = td.get("rope_parameters") or td.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ConfigError(f"{source}: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
        text_kw = {f.name: td[f.name] for f in dataclasses.fields(TextConfig) if f.name in td}
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in text_kw:
                raise ConfigError(f"{source}: missing text_config key {key!r}")
        text_kw["rope_theta"] = float(rope.get("rope_theta", td.get("rope_theta", 5000000.0)))
        text_kw["mrope_section"] = tuple(rope.get("mrope_section", TextConfig.mrope_section))
        if text_kw.get("num_key_value_heads") is None:
            text_kw["num_key_value_heads"] = text_kw["num_attention_heads"]
        if text_kw.get("head_dim") is None:
            text_kw["head_dim"] = text_kw["hidden_size"] // text_kw["num_attention_heads"]
        vis_kw = hf_vision_kwargs(vd, VisionConfig, "deepstack_visual_indexes", text_kw["hidden_size"])
        tie = bool(d.get("tie_word_embeddings", td.get("tie_word_embeddings", False)))
        top = {k: d[k] for k in VISION_TOKEN_KEYS if k in d}
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):   # absent means None, as in transformers
            top[k] = td.get(k, d.get(k))
        try:
            return cls(text=TextConfig(**text_kw), vision=VisionConfig(**vis_kw), tie_word_embeddings=tie, **top)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The transformers 5.x layout, as `save_pretrained` writes it."""
        text_config = hf_text_config(self, "qwen3_vl_text", dtype, rope_extra={"mrope_interleaved": True},
                                     extra={"attention_bias": False})
        vision_config = hf_vision_config(self.vision, "qwen3_vl_vision", "deepstack_visual_indexes")
        return hf_config_dict(self, ARCHITECTURE, "qwen3_vl", text_config, vision_config, dtype)


def _small_vision(out_hidden_size: int) -> VisionConfig:
    """The vision tower of the 2B and 4B checkpoints."""
    return VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                        out_hidden_size=out_hidden_size, deepstack_visual_indexes=(5, 11, 17))
