"""Build the embedded tiny Qwen2.5-VL checkpoint (HF format) in jaxr1/assets/tiny_qwen2_5_vl/, reproducibly.

    python scripts/make_tiny_checkpoint.py [--family qwen2_5_vl|qwen2_vl] [--out DIR]

A byte-level BPE tokenizer (Qwen2's pre-tokenizer, Qwen's special tokens in Qwen's order, Qwen2.5-VL's chat
template) trained on a small synthetic corpus, a Qwen2VLImageProcessor config for small images, and a random
Qwen2.5-VL of about one million parameters written by jaxr1's own `save_hf`. Loads in transformers and jaxr1.
`--family qwen2_vl` writes jaxr1/assets/tiny_qwen2_vl/ instead: the same tokenizer, image processor and text
sizes (Qwen2-VL-Instruct ships the same special tokens and chat template) with a Qwen2-VL vision tower.
"""
from __future__ import annotations

import argparse
import json
import os
import random

from jaxr1.data.synthetic import BACKGROUND

# Qwen's special tokens, in the order of their ids in the real vocabulary (151643...).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
BPE_VOCAB = 1010          # byte-level BPE pieces; the special tokens come after them
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
# Normalise with the synthetic scenes' statistics, not CLIP's: their light-grey background (jaxr1.data.synthetic,
# about 90% of the pixels) maps to zero, so a random vision tower's features are about the shapes rather than a
# large image-independent background term. With CLIP's mean the tiny model never learns to count (the SFT loss
# stays at chance for 600 steps); with this one it does within a few hundred.
IMAGE_MEAN, IMAGE_STD = [c / 255 for c in BACKGROUND], [0.5] * 3


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """Text the tiny model will see: R1-style prompts and answers, counting, arithmetic, shapes and colours."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "cyan", "gray", "brown", "orange", "white", "black"]
    shapes = ["cube", "sphere", "cylinder", "circle", "square", "triangle", "object", "objects", "shape", "shapes"]
    words = ("how many are there in the image what is answer question think first then reasoning process "
             "count total number of a an and or is it first user assistant system you helpful solve "
             "provide final between tags respectively i see so let me large small left right").split()
    out = ["A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
           "The assistant first thinks about the reasoning process in the mind and then provides the user with "
           "the answer. The reasoning process and answer are enclosed within <think> </think> and "
           "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>"
           "<answer> answer here </answer>", "You are a helpful assistant."]
    for _ in range(n):
        k = rng.randint(0, 12)
        c, s = rng.choice(colours), rng.choice(shapes)
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        out.append(rng.choice([
            f"How many {s} are there? Output the thinking process in <think> </think> and final answer "
            f"(number) in <answer> </answer> tags.",
            f"<think>I see {k} {c} {s}. So there are {k} objects.</think><answer>{k}</answer>",
            f"<think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>",
            f"The answer is {rng.choice('ABCD')}. {a}/{b} \\frac{{{a}}}{{{b}}} \\boxed{{{k}}} x = {a}",
            " ".join(rng.choice(words + colours + shapes) for _ in range(rng.randint(3, 12))),
        ]))
    return out


def build_tokenizer(out_dir: str) -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "eos_token": "<|im_end|>",
                   "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None, "errors": "replace",
                   "clean_up_tokenization_spaces": False, "split_special_tokens": False,
                   "chat_template": CHAT_TEMPLATE}, f, indent=2)
    return tok.get_vocab_size()


def write_preprocessor_config(out_dir: str, *, patch_size: int = 14, merge_size: int = 2,
                              min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> None:
    """The Qwen2VLImageProcessor config (Qwen3-VL's processor is the same with patch 16), with the synthetic
    scenes' image statistics."""
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": min_pixels,
                   "max_pixels": max_pixels, "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
                   "patch_size": patch_size, "temporal_patch_size": 2, "merge_size": merge_size,
                   "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD,
                   "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                   "rescale_factor": 1 / 255, "resample": 3}, f, indent=2)


def write_generation_config(out_dir: str, ids: dict[str, int], vocab: int) -> None:
    """generation_config.json (stop at <|im_end|> or <|endoftext|>), then report the directory's size."""
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                   "pad_token_id": ids["<|endoftext|>"]}, f, indent=2)
    size = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {out_dir}: vocab {vocab}, {size / 1e6:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from jaxr1.assets import TINY_MODEL_DIR
    ap.add_argument("--family", choices=("qwen2_5_vl", "qwen2_vl"), default="qwen2_5_vl")
    ap.add_argument("--out", default=None, help="default: jaxr1/assets/tiny_<family>")
    args = ap.parse_args()
    args.out = args.out or os.path.join(os.path.dirname(TINY_MODEL_DIR), f"tiny_{args.family}")
    os.makedirs(args.out, exist_ok=True)
    vocab = build_tokenizer(args.out)
    ids = {t: vocab - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)}
    write_preprocessor_config(args.out)

    from flax import nnx
    from jaxr1.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, TextConfig, VisionConfig, save_hf
    text = TextConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, mrope_section=(4, 6, 6),
                      max_position_embeddings=4096)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if args.family == "qwen2_vl":
        from jaxr1.models import qwen2_vl
        cfg = qwen2_vl.ModelConfig(
            text=text, vision=qwen2_vl.VisionConfig(depth=4, hidden_size=64, intermediate_size=256, num_heads=4,
                                                    out_hidden_size=128), tie_word_embeddings=True, **tokens)
        qwen2_vl.save_hf(qwen2_vl.Qwen2_VL(cfg, rngs=nnx.Rngs(0)), args.out)
    else:
        cfg = ModelConfig(
            text=text, vision=VisionConfig(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, window_size=112,
                                           out_hidden_size=128, fullatt_block_indexes=(1, 3)),
            tie_word_embeddings=True, **tokens)
        save_hf(Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), args.out)
    write_generation_config(args.out, ids, vocab)


if __name__ == "__main__":
    main()
