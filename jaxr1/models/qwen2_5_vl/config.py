"""Qwen2.5-VL configuration: frozen dataclasses built from an HF `config.json` (transformers 4.x or 5.x layout)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from jaxr1.errors import UserError

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"


class ConfigError(UserError, ValueError):
    """A config.json that is not a usable Qwen2.5-VL config; the message names the file and key."""


class VisionShape:
    """Sizes every family's VisionConfig derives alike (from hidden_size, num_heads, in_channels,
    temporal_patch_size, patch_size and spatial_merge_size)."""

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


class FromHFDir:
    """`from_hf_dir` for any family's ModelConfig (through its `from_hf_dict`)."""

    @classmethod
    def from_hf_dir(cls, hf_dir: str):
        d, path = read_hf_config(hf_dir)
        return cls.from_hf_dict(d, source=path)


@dataclasses.dataclass(frozen=True)
class VisionConfig(VisionShape):
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 2048
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    tokens_per_second: int = 2
    rope_theta: float = 10000.0


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


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
        check_shapes(self.text, self.vision)

    # Named sizes, from the published config.json files of the Instruct checkpoints.
    @classmethod
    def qwen2_5_vl_3b(cls) -> "ModelConfig":
        return cls(text=TextConfig(), vision=VisionConfig(out_hidden_size=2048), tie_word_embeddings=True)

    @classmethod
    def qwen2_5_vl_7b(cls) -> "ModelConfig":
        return cls(
            text=TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4),
            vision=VisionConfig(out_hidden_size=3584), tie_word_embeddings=False)

    # ---- HF config.json <-> ModelConfig ----
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        check_model_type(d, source, "qwen2_5_vl", ARCHITECTURE, "Qwen2.5-VL")
        common = hf_text_kwargs(d, source)
        vd = dict(d.get("vision_config") or {})
        if not vd:
            raise ConfigError(f"{source}: missing key 'vision_config'")
        vd.setdefault("in_channels", vd.get("in_chans", 3))
        vis_kw = hf_vision_kwargs(vd, VisionConfig, "fullatt_block_indexes", common["text"].hidden_size)
        try:
            return cls(vision=VisionConfig(**vis_kw), **common)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The transformers 5.x layout (nested text_config); transformers 4.49+ reads it too."""
        return hf_config_dict(self, ARCHITECTURE, "qwen2_5_vl", hf_text_config(self, "qwen2_5_vl_text", dtype),
                              hf_vision_config(self.vision, "qwen2_5_vl_vision", "fullatt_block_indexes"), dtype)


# ---- Shared with the other Qwen-VL families (same Qwen2 text decoder, same token ids) ----
VISION_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def check_shapes(t: TextConfig, v: Any) -> None:
    """The divisibility the decoder, M-RoPE and the vision rotary need; `v` is any family's VisionConfig
    (block width `hidden_size`, `num_heads`, merger output `out_hidden_size`)."""
    if t.hidden_size % t.num_attention_heads or t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(f"text: hidden_size {t.hidden_size}, heads {t.num_attention_heads}, "
                          f"kv heads {t.num_key_value_heads} do not divide")
    if 2 * sum(t.mrope_section) != t.head_dim:
        raise ConfigError(f"text: mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
    check_vision_shapes(v, t.hidden_size)


def check_vision_shapes(v: Any, text_hidden_size: int) -> None:
    """The vision rotary's head_dim (a multiple of 4) and the merger output width (the text width)."""
    if v.hidden_size % v.num_heads or v.head_dim % 4:
        raise ConfigError(f"vision: head_dim {v.hidden_size}/{v.num_heads} must be a multiple of 4")
    if v.out_hidden_size != text_hidden_size:
        raise ConfigError(f"vision.out_hidden_size {v.out_hidden_size} != text hidden_size {text_hidden_size}")


def check_model_type(d: dict[str, Any], source: str, model_type: str, architecture: str, name: str) -> None:
    """Refuse a config.json of another model (neither the family's model_type nor its architecture)."""
    archs = d.get("architectures") or []
    if d.get("model_type") != model_type and architecture not in archs:
        raise ConfigError(f"{source}: model_type={d.get('model_type')!r}, architectures={archs}: "
                          f"not a {name} config (expected model_type '{model_type}')")


def read_hf_config(hf_dir: str) -> tuple[dict[str, Any], str]:
    """(parsed config.json, its path); errors name the directory or file."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"{hf_dir}: no such directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (not an HF model directory)")
    with open(path) as f:
        try:
            return json.load(f), path
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None


def hf_text_kwargs(d: dict[str, Any], source: str, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """ModelConfig keyword arguments other than `vision` (text config, tying, token ids) from an HF config
    dict. `defaults` replaces TextConfig's defaults for keys the file omits (each family's transformers
    defaults differ, e.g. rms_norm_eps)."""
    # transformers 5.x nests the text fields under text_config; 4.x keeps them flat at the top level.
    text_d = dict(d)
    if isinstance(d.get("text_config"), dict):
        text_d.update(d["text_config"])
    if text_d.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=true is not supported (no released Qwen-VL uses it)")
    rope = text_d.get("rope_parameters") or text_d.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", text_d.get("rope_theta", TextConfig.rope_theta))
    text_kw = dict(defaults or {})
    for f in dataclasses.fields(TextConfig):
        if f.name in text_d:
            text_kw[f.name] = text_d[f.name]
    text_kw["rope_theta"] = float(rope_theta)
    if "mrope_section" in rope:
        text_kw["mrope_section"] = tuple(rope["mrope_section"])
    if text_kw.get("num_key_value_heads") is None:
        text_kw["num_key_value_heads"] = text_kw.get("num_attention_heads", TextConfig.num_attention_heads)
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    for key in required:
        if key not in text_kw:
            raise ConfigError(f"{source}: missing text key {key!r}")
    tie = bool(d.get("tie_word_embeddings", False) or text_d.get("tie_word_embeddings", False))
    top = {k: d[k] for k in VISION_TOKEN_KEYS if k in d}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if k in text_d:
            top[k] = text_d[k]
    return {"text": TextConfig(**text_kw), "tie_word_embeddings": tie, **top}


def hf_vision_kwargs(vd: dict[str, Any], vision_cls: type, tuple_field: str, text_hidden_size: int) -> dict[str, Any]:
    """VisionConfig keyword arguments from an HF vision_config whose keys are the dataclass's field names:
    rope_theta from rope_parameters, the list field `tuple_field` as a tuple, out_hidden_size defaulting to
    the text width."""
    vis_kw = {f.name: vd[f.name] for f in dataclasses.fields(vision_cls) if f.name in vd}
    vis_kw["rope_theta"] = float((vd.get("rope_parameters") or {}).get("rope_theta", vision_cls.rope_theta))
    vis_kw[tuple_field] = tuple(vd.get(tuple_field, getattr(vision_cls, tuple_field)))
    vis_kw.setdefault("out_hidden_size", text_hidden_size)
    return vis_kw


def hf_vision_config(v: Any, model_type: str, tuple_field: str) -> dict[str, Any]:
    """The inverse of `hf_vision_kwargs`: the HF vision_config of a VisionConfig."""
    return {
        "model_type": model_type,
        **{f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name != "rope_theta"},
        tuple_field: list(getattr(v, tuple_field)),
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }


def hf_config_dict(cfg: Any, architecture: str, model_type: str, text_config: dict[str, Any],
                   vision_config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The top level of the transformers 5.x config.json for any family's ModelConfig."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "text_config": text_config,
        "vision_config": vision_config,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        **{k: getattr(cfg, k) for k in VISION_TOKEN_KEYS},
        "dtype": dtype,
    }


def hf_text_config(cfg: Any, model_type: str, dtype: str, *, rope_extra: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nested `text_config` of the transformers 5.x layout for any family's ModelConfig (the fields of
    its TextConfig); `rope_extra` adds to rope_parameters, `extra` (default: use_sliding_window false) to the
    flags that follow it."""
    t = cfg.text
    return {
        "model_type": model_type,
        **{f.name: getattr(t, f.name) for f in dataclasses.fields(t)
           if f.name not in ("rope_theta", "mrope_section")},
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                            "mrope_section": list(t.mrope_section), **(rope_extra or {})},
        **({"use_sliding_window": False} if extra is None else extra),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "dtype": dtype,
    }
