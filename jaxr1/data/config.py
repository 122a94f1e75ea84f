"""Data settings (the `data:` section of a run config) and the R1 prompt presets."""
from __future__ import annotations

import dataclasses

# open-r1-multimodal / R1-V system prompt (DeepSeek-R1's format instruction).
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>"
)
# R1-V's user-side template (used there without a system prompt).
R1V_QUESTION_TEMPLATE = (
    "{Question} Output the thinking process in <think> </think> and final answer (number) in "
    "<answer> </answer> tags."
)
SCHEMAS = ("auto", "r1v", "swift", "lmmr1")
FORMATS = ("auto", "jsonl", "json", "parquet", "disk", "hub")
PAD_TO = ("multiple", "pow2", "max")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str | tuple[str, ...] = ""          # file, glob, directory, list of those, or a hub dataset name
    format: str = "auto"                       # see FORMATS; auto: by extension / directory contents
    split: str = "train"                       # for hub names and DatasetDict directories
    schema: str = "auto"                       # see SCHEMAS; auto: decided per row from its keys
    image_root: str | None = None              # base of relative image paths; default: the data file's dir
    system_prompt: str | None = R1_SYSTEM_PROMPT   # None: no system turn (Qwen's template adds its default)
    question_template: str = "{question}"      # "{question}"/"{Question}" is replaced by the row's question
    append_choices: bool = True                # add "A. ..." lines when the question does not list the choices
    task: str | None = None                    # default reward task for rows that name none
    min_pixels: int | None = None              # override the image processor's smart_resize bounds
    max_pixels: int | None = None
    max_prompt_length: int = 1024              # tokens incl. expanded <|image_pad|>; longer rows are skipped
    batch_size: int = 8                        # prompts per host per step (fixed, also at the end of data)
    pad_to: str = "multiple"                   # see PAD_TO: bucket of the padded prompt length
    pad_multiple: int = 64
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None              # None: repeat forever (the trainer counts steps)
    num_threads: int = 2                       # grain read threads for the per-row preprocessing
    prefetch: int = 16                         # rows buffered ahead (each holds its pixel_values)
    worker_count: int = 0                      # >0: grain worker processes (mp_prefetch)

    def __post_init__(self):
        for name, allowed in (("schema", SCHEMAS), ("format", FORMATS), ("pad_to", PAD_TO)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.max_prompt_length < 1 or self.pad_multiple < 1:
            raise ValueError("data.batch_size, data.max_prompt_length and data.pad_multiple must be >= 1")
        if isinstance(self.path, list):
            object.__setattr__(self, "path", tuple(self.path))

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) if isinstance(self.path, str) else tuple(self.path)
