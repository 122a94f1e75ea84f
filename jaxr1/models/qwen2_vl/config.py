"""Qwen2-VL configuration: frozen dataclasses built from an HF `config.json` (transformers 4.x or 5.x layout).

The text side is Qwen2.5-VL's (`qwen2_5_vl.TextConfig`, same decoder); only the vision tower differs. Field
names follow jaxr1's Qwen2.5-VL VisionConfig, not HF's: `hidden_size` is the block width (HF `embed_dim`),
`intermediate_size` the MLP width (HF `embed_dim * mlp_ratio`) and `out_hidden_size` the merger output (HF
`hidden_size`), so code shared across families (slot layout, sharding rules, benchmarks) reads one schema.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxr1.models.qwen2_5_vl.config import (ConfigError, FromHFDir, TextConfig, VisionShape, check_model_type,
                                            check_shapes, hf_config_dict, hf_text_config, hf_text_kwargs)

ARCHITECTURE = "Qwen2VLForConditionalGeneration"
# transformers' Qwen2VLTextConfig defaults where they differ from TextConfig's, for keys a file omits.
_HF_TEXT_DEFAULTS = {"rms_norm_eps": 1e-5, "max_position_embeddings": 32768}


@dataclasses.dataclass(frozen=True)
class VisionConfig(VisionShape):
    # Defaults are transformers' Qwen2VLVisionConfig defaults (the 7B tower).
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 3584
    hidden_act: str = "quick_gelu"
    rope_theta: float = 10000.0

    @property
    def window_size(self) -> None:
        """No window attention: every block attends over the whole frame. The shared slot layout
        (`qwen2_5_vl.vision_index.build_vision_layout`) then keeps one window per frame in processor order."""
        return None


_TEXT_7B = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)


@dataclasses.dataclass(frozen=True)
class ModelConfig(FromHFDir):
    # Defaults: Qwen2-VL-7B (transformers' vision defaults are the 7B tower; TextConfig's are Qwen2.5-VL-3B's).
    text: TextConfig = _TEXT_7B
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
        check_shapes(self.text, self.vision)
        v = self.vision
        if v.intermediate_size % v.hidden_size:
            # HF stores the MLP width as an integer mlp_ratio of embed_dim.
            raise ConfigError(f"vision: intermediate_size {v.intermediate_size} is not a multiple of "
                              f"hidden_size {v.hidden_size} (HF mlp_ratio must be an integer)")

    # Named sizes, from the published config.json files of the Instruct checkpoints.
    @classmethod
    def qwen2_vl_2b(cls) -> "ModelConfig":
        return cls(
            text=TextConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                            num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768),
            vision=VisionConfig(out_hidden_size=1536), tie_word_embeddings=True)

    @classmethod
    def qwen2_vl_7b(cls) -> "ModelConfig":
        return cls(text=_TEXT_7B, vision=VisionConfig(out_hidden_size=3584), tie_word_embeddings=False)

    # ---- HF config.json <-> ModelConfig ----
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        check_model_type(d, source, "qwen2_vl", ARCHITECTURE, "Qwen2-VL")
        common = hf_text_kwargs(d, source, defaults=_HF_TEXT_DEFAULTS)
        vd = dict(d.get("vision_config") or {})
        if not vd:
            raise ConfigError(f"{source}: missing key 'vision_config'")
        dflt = VisionConfig()
        embed_dim = vd.get("embed_dim", dflt.hidden_size)
        mlp_ratio = vd.get("mlp_ratio", dflt.intermediate_size // dflt.hidden_size)
        vis_kw = {k: vd[k] for k in ("depth", "num_heads", "patch_size", "temporal_patch_size",
                                     "spatial_merge_size", "hidden_act") if k in vd}
        try:
            # The released 4.x configs say in_chans, 5.x in_channels; transformers sizes the MLP int(embed * ratio).
            vision = VisionConfig(
                hidden_size=embed_dim, intermediate_size=int(embed_dim * mlp_ratio),
                in_channels=vd.get("in_channels", vd.get("in_chans", dflt.in_channels)),
                out_hidden_size=vd.get("hidden_size", dflt.out_hidden_size),
                rope_theta=float((vd.get("rope_parameters") or {}).get("rope_theta", dflt.rope_theta)), **vis_kw)
            return cls(vision=vision, **common)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The transformers 5.x layout (nested text_config, HF's vision field names)."""
        v = self.vision
        vision_config = {
            "model_type": "qwen2_vl_vision", "depth": v.depth, "embed_dim": v.hidden_size,
            "hidden_size": v.out_hidden_size, "mlp_ratio": v.intermediate_size // v.hidden_size,
            "num_heads": v.num_heads, "in_channels": v.in_channels, "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size, "spatial_merge_size": v.spatial_merge_size,
            "hidden_act": v.hidden_act, "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        }
        return hf_config_dict(self, ARCHITECTURE, "qwen2_vl", hf_text_config(self, "qwen2_vl_text", dtype),
                              vision_config, dtype)
