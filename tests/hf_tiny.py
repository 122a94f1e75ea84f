"""Tiny random transformers Qwen2.5-VL models and synthetic inputs for parity tests (needs torch)."""
from __future__ import annotations

import numpy as np

IMAGE_TOKEN_ID = 151655 - 151000  # tiny vocab: keep the special ids inside it
VISION_START_ID = IMAGE_TOKEN_ID - 3
VISION_END_ID = IMAGE_TOKEN_ID - 2


def tiny_hf_config(*, tie: bool = False, vocab: int = 700, window_size: int = 56, depth: int = 3,
                   layers: int = 3, fullatt=(1,)):
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         max_position_embeddings=4096, tie_word_embeddings=tie),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, window_size=window_size, out_hidden_size=64,
                           fullatt_block_indexes=list(fullatt), in_channels=3),
        image_token_id=IMAGE_TOKEN_ID, video_token_id=IMAGE_TOKEN_ID + 1, vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID, tie_word_embeddings=tie)


def make_hf_model(cfg, seed: int = 0, model_cls=None):
    """model_cls: the transformers class to build (default Qwen2_5_VLForConditionalGeneration)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = (model_cls or Qwen2_5_VLForConditionalGeneration)(cfg).eval()
    # Random init leaves norms at 1 and biases at 0; perturb everything so parity sees every weight.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_image_inputs(grids: list[tuple[int, int, int]], seed: int = 0, patch: int = 14):
    """pixel_values [N, 3*2*patch*patch] and image_grid_thw as the image processor emits them."""
    rng = np.random.default_rng(seed)
    n = sum(t * h * w for t, h, w in grids)
    return rng.standard_normal((n, 3 * 2 * patch * patch)).astype(np.float32), np.asarray(grids, np.int64)


def prompt_ids(text_len: int, grids=(), seed: int = 0, vocab: int = 600) -> list[int]:
    """Random text tokens with each image's <|vision_start|> <|image_pad|>*n <|vision_end|> block inside."""
    rng = np.random.default_rng(seed)
    ids = list(rng.integers(10, vocab - 150, text_len // 2))
    for t, h, w in grids:
        ids += [VISION_START_ID] + [IMAGE_TOKEN_ID] * (t * h * w // 4) + [VISION_END_ID]
        ids += list(rng.integers(10, vocab - 150, 3))
    ids += list(rng.integers(10, vocab - 150, text_len - text_len // 2))
    return [int(i) for i in ids]


def left_pad(rows: list[list[int]], pad_id: int = 0):
    t = max(map(len, rows))
    ids = np.full((len(rows), t), pad_id, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = r
        mask[i, t - len(r):] = 1
    return ids, mask


def hf_logits(model, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, hidden=False):
    """Reference logits. mm_token_type_ids makes transformers compute M-RoPE; for text-only batches we pass
    mask-aware position ids (what HF generate uses) so left-padded rows are positioned like unpadded ones."""
    import torch
    ids = torch.as_tensor(input_ids)
    mask = torch.as_tensor(attention_mask)
    kw = dict(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
    if pixel_values is not None:
        kw.update(pixel_values=torch.as_tensor(pixel_values), image_grid_thw=torch.as_tensor(image_grid_thw),
                  mm_token_type_ids=(ids == model.config.image_token_id).int())
    else:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw["position_ids"] = pos[None].expand(3, -1, -1)
    with torch.no_grad():
        out = model(**kw)
    if hidden:
        return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]
    return out.logits.float().numpy()
