"""Data: row sources and schemas -> prompts (chat template, image patches) -> grain pipeline of PromptBatches."""
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
