"""grain pipeline: rows -> (shard per host, shuffle by seed, repeat) -> preprocess -> fixed-size PromptBatches.

Order matters: slicing the index space before shuffling means a host only ever reads (and decodes) its own
rows; grain's shuffle reseeds each epoch. Bad rows travel as BadRow markers and are counted here, in the
consuming process, so counts are right with worker processes and are part of the saved iterator state.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Iterator

import grain

from jaxr1.data.config import DataConfig
from jaxr1.data.errors import BadRow, BadRowError, DataError
from jaxr1.data.processing import Preprocessor, PromptBatch, collate, load_processors
from jaxr1.data.sources import ConcatSource, RawRow, open_sources

log = logging.getLogger("jaxr1.data")
_MAX_LOGGED = 100  # individual warnings; later bad rows are only counted


class PromptDataset:
    """One host's view of the data; iterate it for PromptBatches."""

    def __init__(self, cfg: DataConfig, tokenizer: Any, image_processor: Any, *,
                 process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.cfg = cfg
        synthetic = dict(n=cfg.num_synthetic, seed=cfg.seed, start=cfg.synthetic_start,
                         max_objects=cfg.max_objects)
        self.source = open_sources(cfg.paths, cfg.format, cfg.split, cfg.image_root, synthetic)
        self.preprocess = Preprocessor(
            tokenizer, image_processor, schema=cfg.schema, system_prompt=cfg.system_prompt,
            question_template=cfg.question_template, append_choices=cfg.append_choices, task=cfg.task,
            max_prompt_length=cfg.max_prompt_length, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        check_usable(self.source, self.preprocess)
        self.pad_id = _pad_id(tokenizer)
        ds = grain.MapDataset.source(self.source)[process_index::process_count]
        self.num_rows = len(ds)  # rows per epoch on this host, bad ones included
        if self.num_rows == 0:
            raise DataError(f"host {process_index} of {process_count} gets no rows ({len(self.source)} in total)")
        if cfg.shuffle:
            ds = ds.shuffle(seed=cfg.seed)
        if cfg.num_epochs != 1:
            ds = ds.repeat(cfg.num_epochs)
        self._ds = ds.map(self.preprocess)

    def __iter__(self) -> "PromptIterator":
        return PromptIterator(self)


class PromptIterator(Iterator[PromptBatch]):
    """Checkpointable: get_state() after batch k, set_state() on a fresh iterator -> batch k+1 again."""

    def __init__(self, dataset: PromptDataset):
        cfg = dataset.cfg
        self._dataset, self._cfg = dataset, cfg
        it_ds = dataset._ds.to_iter_dataset(
            grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch))
        if cfg.worker_count > 0:
            _absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
        self._it = iter(it_ds)
        self.bad_rows: collections.Counter[str] = collections.Counter()
        self.rows_read = 0
        self._bad_streak = 0
        self._logged = 0

    def __next__(self) -> PromptBatch:
        examples = []
        while len(examples) < self._cfg.batch_size:
            try:
                item = next(self._it)
            except StopIteration:
                break
            self.rows_read += 1
            if isinstance(item, BadRow):
                self._skip(item)
            else:
                self._bad_streak = 0
                examples.append(item)
        if not examples:
            raise StopIteration
        return collate(examples, pad_id=self._dataset.pad_id, batch_size=self._cfg.batch_size,
                       pad_to=self._cfg.pad_to, multiple=self._cfg.pad_multiple,
                       max_length=self._cfg.max_prompt_length)

    def get_state(self) -> dict:
        """JSON-serialisable; includes the bad-row counts so metrics continue across a resume."""
        return {"grain": self._it.get_state(), "rows_read": self.rows_read, "bad_rows": dict(self.bad_rows)}

    def set_state(self, state: dict) -> None:
        self._it.set_state(state["grain"])
        self.rows_read = int(state.get("rows_read", 0))
        self.bad_rows = collections.Counter({k: int(v) for k, v in state.get("bad_rows", {}).items()})
        self._bad_streak = 0

    def close(self) -> None:
        """Stops grain's prefetch threads / worker processes (also done when the iterator is collected)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    @property
    def epoch(self) -> float:
        return self.rows_read / self._dataset.num_rows

    def metrics(self) -> dict[str, float]:
        out = {f"data/bad_rows/{k}": float(v) for k, v in sorted(self.bad_rows.items())}
        out["data/bad_rows"] = float(sum(self.bad_rows.values()))
        out["data/epoch"] = self.epoch
        return out

    def _skip(self, bad: BadRow) -> None:
        self.bad_rows[bad.reason] += 1
        self._bad_streak += 1
        if self._logged < _MAX_LOGGED:
            self._logged += 1
            more = " (further bad rows are counted, not logged)" if self._logged == _MAX_LOGGED else ""
            log.warning("skipping bad row: %s%s", bad.describe(), more)
        if self._bad_streak >= self._dataset.num_rows:
            # A whole epoch of this host's shard without one usable row: never yield, so fail loudly.
            raise DataError(f"{self._bad_streak} bad rows in a row on this host, no usable row in its shard; "
                            f"last: {bad.describe()}")


def check_usable(source: ConcatSource, preprocess: Preprocessor) -> None:
    """Fail at start, naming the file, when a file has no usable row (e.g. a wrong image root)."""
    for src in source.sources:
        reasons: collections.Counter[str] = collections.Counter()
        first = None
        for row in range(len(src)):
            try:
                raw = RawRow(src.get(row), src.name, row, src.base_dir)
            except BadRowError as e:
                raw = RawRow(None, src.name, row, src.base_dir, str(e))
            try:
                preprocess.process(raw)
                break
            except BadRowError as e:
                reasons[e.reason] += 1
                first = first or f"row {row}: {e.reason}: {e}"
        else:
            raise DataError(f"{src.name}: none of its {len(src)} rows is usable ({dict(reasons)}); first: {first}")


def build_dataset(cfg: Any, tokenizer: Any = None, image_processor: Any = None, *, model_dir: str | None = None,
                  process_index: int = 0, process_count: int = 1, split: str = "train") -> PromptDataset | None:
    """The trainer's entry point; pass jax.process_index() / jax.process_count() on multi-host runs.

    cfg: a data DataConfig or the run config's data section. split="eval" gives the held-out set
    (one ordered pass), or None when there is none.
    """
    cfg = DataConfig.from_run_config(cfg)
    if split == "eval":
        cfg = cfg.for_eval()
        if cfg is None:
            return None
    elif split != "train":
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if tokenizer is None or image_processor is None:
        if model_dir is None:
            raise ValueError("build_dataset needs a tokenizer and image processor, or model_dir to load them")
        tok, ip = load_processors(model_dir, cfg.min_pixels, cfg.max_pixels)
        tokenizer, image_processor = tokenizer or tok, image_processor or ip
    return PromptDataset(cfg, tokenizer, image_processor, process_index=process_index,
                         process_count=process_count)


def _absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; without absl.app (our CLIs use argparse) they are unparsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:  # Qwen ships <|endoftext|> as pad; fall back to it (any id works under the mask)
        pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad)
