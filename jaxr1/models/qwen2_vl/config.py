"""Qwen2-VL configuration: frozen dataclasses built from an HF `config.json` (transformers 4.x or 5.x layout).

The text side is Qwen2.5-VL's (`qwen2_5_vl.TextConfig`, same decoder); only the vision tower differs. Field
names follow jaxr1's Qwen2.5-VL VisionConfig, not HF's: `hidden_size` is the block width (HF `embed_dim`),
`intermediate_size` the MLP width (HF `embed_dim * mlp_ratio`) and `out_hidden_size` the merger output (HF
`hidden_size`), so code shared across families (slot layout, sharding rules, benchmarks) reads one schema.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxr1.models.qwen2_5_vl.config import (ConfigError, TextConfig, check_shapes, hf_text_config, hf_text_kwargs,
                                            read_hf_config)

ARCHITECTURE = "Qwen2VLForConditionalGeneration"
# transformers' Qwen2VLTextConfig defaults where they differ from TextConfig's, for keys a file omits.
_HF_TEXT_DEFAULTS = {"rms_norm_eps": 1e-5, "max_position_embeddings": 32768}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
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
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch as the image processor emits it: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_size(self) -> None:
        """No window attention: every block attends over the whole frame. The shared slot layout
        (`qwen2_5_vl.vision_index.build_vision_layout`) then keeps one window per frame in processor order."""
        return None


_TEXT_7B = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
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
        archs = d.get("architectures") or []
        if d.get("model_type") != "qwen2_vl" and ARCHITECTURE not in archs:
            raise ConfigError(f"{source}: model_type={d.get('model_type')!r}, architectures={archs}: "
                              f"not a Qwen2-VL config (expected model_type 'qwen2_vl')")
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

    @classmethod
    def from_hf_dir(cls, hf_dir: str) -> "ModelConfig":
        d, path = read_hf_config(hf_dir)
        return cls.from_hf_dict(d, source=path)

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
        return {
            "architectures": [ARCHITECTURE],
            "model_type": "qwen2_vl",
            "text_config": hf_text_config(self, "qwen2_vl_text", dtype),
            "vision_config": vision_config,
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "dtype": dtype,
        }
