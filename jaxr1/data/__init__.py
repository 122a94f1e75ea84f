"""Data: row sources and schemas -> prompts (chat template, image patches) -> grain pipeline of PromptBatches.

    tok, ip = load_processors(model_dir)
    it = iter(build_dataset(cfg.data, tok, ip, process_index=jax.process_index(), process_count=jax.process_count()))
    batch = next(it)                  # PromptBatch: input_ids/attention_mask [B, T], pixel_values, image_grid_thw, ...
    state = it.get_state()            # JSON-able; it.set_state(state) on a fresh iterator resumes exactly
    metrics = it.metrics()            # data/bad_rows/<reason>, data/bad_rows, data/epoch
"""
from jaxr1.data.config import R1_SYSTEM_PROMPT, R1V_QUESTION_TEMPLATE, DataConfig
from jaxr1.data.errors import REASONS, BadRow, BadRowError, DataError
from jaxr1.data.pipeline import PromptDataset, PromptIterator, build_dataset
from jaxr1.data.processing import (Example, Preprocessor, PromptBatch, bucket_length, collate, expand_image_pads,
                                   load_processors)
from jaxr1.data.sources import RawRow, open_sources
from jaxr1.data.synthetic import iter_synthetic, make_scene, write_synthetic_dataset

__all__ = ["DataConfig", "R1_SYSTEM_PROMPT", "R1V_QUESTION_TEMPLATE", "REASONS", "BadRow", "BadRowError",
           "DataError", "PromptDataset", "PromptIterator", "build_dataset", "Example", "Preprocessor",
           "PromptBatch", "bucket_length", "collate", "expand_image_pads", "load_processors", "RawRow",
           "open_sources", "iter_synthetic", "make_scene", "write_synthetic_dataset"]
