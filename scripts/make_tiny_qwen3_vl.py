"""Build the embedded tiny Qwen3-VL checkpoint (HF format) in jaxr1/assets/tiny_qwen3_vl/, reproducibly.

    python scripts/make_tiny_qwen3_vl.py [--out DIR]

The tokenizer of scripts/make_tiny_checkpoint.py (same corpus, Qwen's special tokens in Qwen's order) plus
Qwen3's further added tokens in their real order (<tool_call> ... </think>), Qwen3-VL's chat template (no
default system prompt), a patch-16 Qwen2VLImageProcessor config for small images, and a random Qwen3-VL of
about 1.3M parameters (3 DeepStack layers, tied lm_head as the 2B/4B) written by jaxr1's own `save_hf`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tiny_checkpoint as base  # noqa: E402  (build_tokenizer, special tokens, image statistics)

# After <|video_pad|> in Qwen3's vocabulary (151657...); <think>/</think> are added but not special there.
EXTRA_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>"]
EXTRA_TEXT = ["<think>", "</think>"]
# Literal text only inside {{- '...' }} so that the whitespace control of the tags never eats a newline.
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}{%- if messages[0].content is string %}"
    "{{- messages[0].content }}{%- else %}{%- for c in messages[0].content %}{%- if 'text' in c %}{{- c.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if not (loop.first and message.role == 'system') %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' + image_count.value | string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' + video_count.value | string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
PATCH, MERGE = 16, 2
MIN_PIXELS, MAX_PIXELS = 64 * 64, 128 * 128   # multiples of the 32-pixel merged patch; 128 px = 8 patches
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jaxr1", "assets", "tiny_qwen3_vl")


def build_tokenizer(out_dir: str) -> dict[str, int]:
    """make_tiny_checkpoint's tokenizer, then Qwen3's extra added tokens and chat template. Returns token ids."""
    from tokenizers import AddedToken, Tokenizer
    base.build_tokenizer(out_dir)
    path = os.path.join(out_dir, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.add_special_tokens(EXTRA_SPECIAL)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TEXT])
    tok.save(path)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tok_cfg = json.load(f)
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    with open(cfg_path, "w") as f:
        json.dump(tok_cfg, f, indent=2)
    return {t: tok.token_to_id(t) for t in base.SPECIAL_TOKENS + EXTRA_SPECIAL + EXTRA_TEXT}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.normpath(DEFAULT_OUT))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ids = build_tokenizer(args.out)
    vocab = max(ids.values()) + 1
    # Qwen2VLImageProcessor with patch 16 is Qwen3-VL's image processor; the synthetic scenes' statistics
    # (see make_tiny_checkpoint.py) keep the tiny model usable with the same tiny training recipes.
    base.write_preprocessor_config(args.out, patch_size=PATCH, merge_size=MERGE, min_pixels=MIN_PIXELS,
                                   max_pixels=MAX_PIXELS)

    from flax import nnx
    from jaxr1.models.qwen3_vl import ModelConfig, Qwen3VL, TextConfig, VisionConfig, save_hf
    cfg = ModelConfig(
        text=TextConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=5000000.0,
                        mrope_section=(6, 5, 5), max_position_embeddings=4096),
        vision=VisionConfig(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                            num_position_embeddings=64, deepstack_visual_indexes=(0, 1, 2)),
        tie_word_embeddings=True, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    save_hf(Qwen3VL(cfg, rngs=nnx.Rngs(0)), args.out)
    base.write_generation_config(args.out, ids, vocab)


if __name__ == "__main__":
    main()
