"""Prompt batches shared by the sampling tests (tokenizer-style left padding, processor-style images)."""
import numpy as np

from tests import hf_tiny


def text_batch(lengths=(5, 9, 14), seed=0):
    rows = [hf_tiny.prompt_ids(n, seed=seed + i) for i, n in enumerate(lengths)]
    ids, mask = hf_tiny.left_pad(rows)
    return dict(input_ids=ids, attention_mask=mask)


def image_batch(seed=0):
    """Row 0: one image; row 1: two images (different sizes); different text lengths."""
    per_row = [[(1, 4, 4)], [(1, 4, 6), (1, 2, 4)]]
    rows = [hf_tiny.prompt_ids(6 + 5 * i, grids, seed=seed + i) for i, grids in enumerate(per_row)]
    ids, mask = hf_tiny.left_pad(rows)
    pv, thw = hf_tiny.random_image_inputs([g for grids in per_row for g in grids], seed=seed)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw)


def hf_generate(hf_model, batch, *, max_new_tokens, eos_token_ids, pad_token_id=0):
    """transformers greedy continuation [B, <= max_new_tokens] (it stops once every row has)."""
    import torch
    ids = torch.as_tensor(batch["input_ids"])
    kw = dict(input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"]))
    if batch.get("pixel_values") is not None:
        kw.update(pixel_values=torch.as_tensor(batch["pixel_values"]),
                  image_grid_thw=torch.as_tensor(batch["image_grid_thw"]),
                  mm_token_type_ids=(ids == hf_model.config.image_token_id).int())
    with torch.no_grad():
        out = hf_model.generate(**kw, do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=list(eos_token_ids) or None, pad_token_id=pad_token_id)
    return out[:, ids.shape[1]:].numpy()


def repeat_images(batch, n):
    """pixel_values / image_grid_thw for each prompt's images repeated n times (rows grouped by prompt)."""
    if batch.get("pixel_values") is None:
        return None, None
    ids = batch["input_ids"]
    grids = batch["image_grid_thw"]
    per_image = grids.prod(-1)
    starts = np.concatenate([[0], np.cumsum(per_image)])
    # Images are consumed in row-major order: count each row's <|vision_start|> markers.
    counts = [(row == hf_tiny.VISION_START_ID).sum() for row in ids]
    first = np.concatenate([[0], np.cumsum(counts)])
    pv, thw = [], []
    for r in range(len(ids)):
        imgs = range(first[r], first[r + 1])
        for _ in range(n):
            for i in imgs:
                pv.append(batch["pixel_values"][starts[i]:starts[i + 1]])
                thw.append(grids[i])
    return np.concatenate(pv), np.stack(thw)


def mixed_batch(cfg, b: int):
    """b prompts of the embedded tiny model's vocabulary: even rows with one 4 x 4-patch image, odd rows text."""
    img = cfg.image_token_id
    rows = [[5 + i, 6, cfg.vision_start_token_id] + [img] * 4 + [cfg.vision_end_token_id] + [7 + j for j in range(i)]
            if i % 2 == 0 else [9 + i, 10, 11, 12 + i][: 2 + i % 3] for i in range(b)]
    ids, mask = hf_tiny.left_pad(rows)
    pv, thw = hf_tiny.random_image_inputs([(1, 4, 4)] * ((b + 1) // 2))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw)
