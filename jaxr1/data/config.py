"""Data settings (the `data:` section of a run config) and the R1 prompt presets."""
from __future__ import annotations

import dataclasses
from typing import Any

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
# Preset names a config may use instead of the full text.
SYSTEM_PROMPTS = {"r1": R1_SYSTEM_PROMPT, "none": None}
QUESTION_TEMPLATES = {"r1v": R1V_QUESTION_TEMPLATE, "plain": "{question}"}
SCHEMAS = ("auto", "r1v", "swift", "lmmr1")
FORMATS = ("auto", "jsonl", "json", "parquet", "disk", "hub")
PAD_TO = ("multiple", "pow2", "max")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str | tuple[str, ...] = "synthetic:counting"  # file, glob, dir, list of those, hub name, synthetic:<kind>
    eval_path: str | None = None               # held-out data; None with a synthetic path: held-out scenes
    format: str = "auto"                       # see FORMATS; auto: by extension / directory contents
    split: str = "train"                       # for hub names and DatasetDict directories
    schema: str = "auto"                       # see SCHEMAS; auto: decided per row from its keys
    image_root: str | None = None              # base of relative image paths; default: the data file's dir
    system_prompt: str | None = "r1"           # text or a SYSTEM_PROMPTS name; None: no system turn
    question_template: str = "{question}"      # text or a QUESTION_TEMPLATES name; {question} / {Question}
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
    num_synthetic: int = 2048                  # rows of a synthetic:<kind> path that gives no count
    num_eval: int = 256                        # held-out synthetic rows (scenes after the training ones)
    max_objects: int = 6                       # synthetic scenes hold 1..max_objects shapes
    synthetic_start: int = 0                   # first scene index (eval sets start after the train set)

    def __post_init__(self):
        for name, allowed in (("schema", SCHEMAS), ("format", FORMATS), ("pad_to", PAD_TO)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.max_prompt_length < 1 or self.pad_multiple < 1:
            raise ValueError("data.batch_size, data.max_prompt_length and data.pad_multiple must be >= 1")
        if isinstance(self.path, list):
            object.__setattr__(self, "path", tuple(self.path))
        if self.system_prompt in SYSTEM_PROMPTS:
            object.__setattr__(self, "system_prompt", SYSTEM_PROMPTS[self.system_prompt])
        if self.question_template in QUESTION_TEMPLATES:
            object.__setattr__(self, "question_template", QUESTION_TEMPLATES[self.question_template])

    @classmethod
    def from_run_config(cls, data: Any) -> "DataConfig":
        """From the run config's `data` section (jaxr1.config.DataConfig or a dict); its extra keys are ignored."""
        if isinstance(data, cls):
            return data
        src = dataclasses.asdict(data) if dataclasses.is_dataclass(data) else dict(data)
        renames = {"train": "path", "eval": "eval_path", "prompt_bucket": "pad_multiple"}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{renames.get(k, k): v for k, v in src.items() if renames.get(k, k) in known})

    def for_eval(self) -> "DataConfig | None":
        """The held-out set: one ordered pass over eval_path, or the scenes after a synthetic train set."""
        one_pass = dict(shuffle=False, num_epochs=1)
        if self.eval_path is not None:
            return dataclasses.replace(self, path=self.eval_path, eval_path=None, **one_pass)
        if all(p.startswith("synthetic:") for p in self.paths) and self.num_eval > 0:   # 0: no held-out set
            return dataclasses.replace(self, synthetic_start=self.synthetic_start + self.num_synthetic,
                                       num_synthetic=self.num_eval, **one_pass)
        return None

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) if isinstance(self.path, str) else tuple(self.path)
