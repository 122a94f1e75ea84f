"""Row sources: JSONL, JSON, parquet, `datasets` directories and hub names, read lazily by row index.

Every row comes out as a RawRow that remembers its file and row index, so a bad row can be named.
Sources are random-access so a sharded, shuffled grain pipeline touches (and decodes) only its rows.
"""
from __future__ import annotations

import bisect
import dataclasses
import glob
import json
import os
from typing import Any, Protocol, Sequence

from jaxr1.data.errors import UNREADABLE, BadRowError, DataError
from jaxr1.data.synthetic import SyntheticSource

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class RawRow:
    data: dict | None         # None when the row itself could not be read (error says why)
    source: str               # file (or dataset) name, for messages and the reward example
    row: int                  # 0-based row index within that source
    base_dir: str | None      # where relative image paths resolve
    error: str | None = None


class RowSource(Protocol):
    name: str
    base_dir: str | None

    def __len__(self) -> int: ...

    def get(self, index: int) -> dict: ...


class JsonlSource:
    def __init__(self, path: str, base_dir: str | None = None):
        self.name, self.base_dir = path, base_dir or os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            # Keep raw lines: parsing per access makes a broken line a bad row, not a failed run.
            self._lines = [line for line in f if line.strip()]

    def __len__(self) -> int:
        return len(self._lines)

    def get(self, index: int) -> dict:
        try:
            row = json.loads(self._lines[index])
        except json.JSONDecodeError as e:
            raise BadRowError(UNREADABLE, f"invalid JSON: {e}") from None
        return _as_dict(row)


class JsonSource:
    """A JSON list of rows, or an object holding one list (e.g. {"data": [...]}); JSON Lines as fallback."""

    def __init__(self, path: str, base_dir: str | None = None):
        self.name, self.base_dir = path, base_dir or os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            self._jsonl = JsonlSource(path, self.base_dir)
            self._rows = None
            return
        if isinstance(rows, dict):
            lists = [v for v in rows.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: expected a JSON list of rows or an object with one list of rows")
            rows = lists[0]
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        self._rows = rows

    def __len__(self) -> int:
        return len(self._jsonl) if self._rows is None else len(self._rows)

    def get(self, index: int) -> dict:
        return self._jsonl.get(index) if self._rows is None else _as_dict(self._rows[index])


class ParquetSource:
    def __init__(self, path: str, base_dir: str | None = None):
        import pyarrow.parquet as pq

        self.name, self.base_dir = path, base_dir or os.path.dirname(os.path.abspath(path))
        try:
            self._table = pq.read_table(path, memory_map=True)  # mapped: only touched rows are paged in
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: cannot read parquet: {e}") from e

    def __len__(self) -> int:
        return self._table.num_rows

    def get(self, index: int) -> dict:
        return self._table.slice(index, 1).to_pylist()[0]


class HFSource:
    """A `datasets.Dataset`; Image features are read undecoded so a broken image is a bad row."""

    def __init__(self, dataset: Any, name: str, base_dir: str | None):
        self.name, self.base_dir = name, base_dir
        self._ds = _undecoded_images(dataset)

    def __len__(self) -> int:
        return len(self._ds)

    def get(self, index: int) -> dict:
        return dict(self._ds[index])


class ConcatSource:
    """Several sources as one index space; each row still knows its own file and row index."""

    def __init__(self, sources: Sequence[RowSource]):
        self.sources = list(sources)
        self._starts = []
        total = 0
        for s in self.sources:
            self._starts.append(total)
            total += len(s)
        self._len = total

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[RowSource, int]:
        if not 0 <= index < self._len:
            raise IndexError(index)
        k = bisect.bisect_right(self._starts, index) - 1
        return self.sources[k], index - self._starts[k]

    def __getitem__(self, index: int) -> RawRow:
        src, row = self.locate(int(index))
        try:
            return RawRow(src.get(row), src.name, row, src.base_dir)
        except BadRowError as e:
            return RawRow(None, src.name, row, src.base_dir, str(e))


def open_sources(paths: Sequence[str], fmt: str = "auto", split: str = "train", image_root: str | None = None,
                 synthetic: dict | None = None) -> ConcatSource:
    """Resolve files / globs / directories / hub names / synthetic:<kind> into one ConcatSource.

    `synthetic` holds SyntheticSource.from_path defaults (n, seed, start, max_objects).
    """
    sources: list[RowSource] = []
    for path in paths:
        if path.startswith("synthetic:"):

            sources.append(SyntheticSource.from_path(path, **(synthetic or {})))
        else:
            sources.extend(_open_one(path, fmt, split, image_root))
    empty = [s.name for s in sources if len(s) == 0]
    if empty:
        raise DataError(f"no rows in {', '.join(empty)}")
    if not sources:
        raise DataError(f"no data found at {list(paths)}")
    return ConcatSource(sources)


def _open_one(path: str, fmt: str, split: str, image_root: str | None) -> list[RowSource]:
    path = os.path.expanduser(path)
    if fmt == "hub":
        return [_hub(path, split)]
    if os.path.isdir(path):
        if fmt in ("auto", "disk") and _is_saved_dataset(path):
            return [_disk(path, split, image_root)]
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if _kind(f, fmt, True))
        if not files:
            raise DataError(f"{path}: directory holds no saved dataset and no .jsonl/.json/.parquet files")
        return [_file(f, _kind(f, fmt, True), image_root) for f in files]
    if os.path.isfile(path):
        kind = _kind(path, fmt)
        if kind is None:
            raise DataError(f"{path}: unknown data format; set data.format to one of jsonl, json, parquet")
        return [_file(path, kind, image_root)]
    matches = sorted(glob.glob(path))
    if matches:
        return [s for m in matches for s in _open_one(m, fmt, split, image_root)]
    if fmt == "auto" and "/" in path and not path.startswith((".", "/")) and path.count("/") == 1:
        return [_hub(path, split)]  # looks like "org/name": a hub dataset
    raise DataError(f"{path}: no such file, directory or glob match")


def _kind(path: str, fmt: str, listing: bool = False) -> str | None:
    """The reader for a file: an explicit format wins for a named file; a listing goes by extension."""
    if not os.path.isfile(path):
        return None
    by_ext = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if fmt in ("jsonl", "json", "parquet"):
        return fmt if not listing or by_ext == fmt else None
    return by_ext


def _file(path: str, kind: str, image_root: str | None) -> RowSource:
    cls = {"jsonl": JsonlSource, "json": JsonSource, "parquet": ParquetSource}[kind]
    try:
        return cls(path, image_root)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def _pick_split(ds: Any, split: str, name: str) -> Any:
    import datasets

    if isinstance(ds, (datasets.DatasetDict, dict)):
        if split not in ds:
            raise DataError(f"{name}: no split {split!r} (has {sorted(ds)})")
        return ds[split]
    return ds


def _disk(path: str, split: str, image_root: str | None) -> RowSource:
    import datasets

    ds = _pick_split(datasets.load_from_disk(path), split, path)
    return HFSource(ds, path, image_root or path)


def _hub(name: str, split: str) -> RowSource:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, ...: say which dataset failed
        raise DataError(f"{name}: cannot load hub dataset (split {split!r}): {e}") from e
    return HFSource(ds, name, None)


def _undecoded_images(ds: Any) -> Any:
    import datasets

    def undecoded(feature):
        if isinstance(feature, datasets.Image):
            return dataclasses.replace(feature, decode=False)
        if isinstance(feature, dict):
            return {k: undecoded(v) for k, v in feature.items()}
        if isinstance(feature, list) and len(feature) == 1:
            return [undecoded(feature[0])]
        if dataclasses.is_dataclass(feature) and hasattr(feature, "feature"):
            return dataclasses.replace(feature, feature=undecoded(feature.feature))
        return feature

    for col, feature in ds.features.items():
        new = undecoded(feature)
        if new != feature:
            ds = ds.cast_column(col, new)
    return ds


def _as_dict(row: Any) -> dict:
    if not isinstance(row, dict):
        raise BadRowError(UNREADABLE, f"expected a JSON object, got {type(row).__name__}")
    return row
