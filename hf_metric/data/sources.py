"""Where the rows come from: one Parquet file, a folder or glob of shards, a list of them, CSV / JSON Lines files,
or a `datasets` source; the user's column names mapped to the ones hf_metric reads (`data.columns`).

Every source becomes one `RawTable`: an Arrow table plus where each of its rows came from, so a bad row found
later is named by its shard and its row within that shard. Shards are read in a fixed order (sorted within a
folder or glob, a list as given), so the same rows in shards or in one file prepare exactly the same data.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .chunked import read_error
from .media import AUDIO_COLUMN, IMAGE_COLUMN, normalize_media_column

TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
"""File extensions a path source reads, and the `datasets` builder of the text formats."""


@dataclass
class RowLocator:
    """Which shard a row of the joined table came from. Small and picklable, without the table: a featurizer
    holds it, and `datasets` hashes a transform (and what it holds) by pickling it."""

    source: str
    shards: list[str] = field(default_factory=list)
    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    """First row of each shard in the joined table."""

    def __call__(self, row: int) -> tuple[str, int]:
        """`(shard, row within it)` of row `row` of the joined table."""
        if len(self.shards) <= 1:
            return (self.shards[0] if self.shards else self.source), row
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.shards[i], row - int(self.starts[i])


@dataclass
class RawTable:
    """Rows of one source, concatenated in shard order (chunks kept: nothing is copied)."""

    table: pa.Table
    source: str
    """What messages name: the file, or the folder / glob / list / dataset the rows came from."""
    shards: list[str] = field(default_factory=list)
    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    """First row of each shard in `table`."""
    base_dir: str = "."
    """Relative image/audio paths are resolved against it (the file's folder; shards are resolved one by one)."""

    def __str__(self) -> str:
        return self.source

    @property
    def locator(self) -> RowLocator:
        return RowLocator(self.source, self.shards, self.starts)

    def where(self, row: int) -> tuple[str, int]:
        """`(shard, row within it)` of row `row` of the table."""
        return self.locator(row)


def expand_paths(spec: str | list[str]) -> list[str]:
    """The files of `data.parquet_path` / `data.val_path`: a file, a folder (its table files, sorted, searched
    recursively), a glob (sorted) or a list of any of them (in the order given)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    files: list[str] = []
    for one in specs:
        one = str(one)
        if os.path.isdir(one):
            found = sorted(str(p) for p in Path(one).rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
            if not found:
                hint = " (a datasets save_to_disk folder: data.dataset.path)" if _is_saved_dataset(one) else ""
                raise DataError(f"{one}: no Parquet, CSV or JSON Lines files in this folder{hint}")
        elif glob.has_magic(one):
            found = sorted(p for p in glob.glob(one, recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"{one}: no file matches this pattern")
        elif os.path.isfile(one):
            found = [one]
        else:
            raise DataError(f"{one}: file not found")
        files.extend(found)
    return files


def _is_saved_dataset(path: str) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    markers = ("state.json", "dataset_dict.json")
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in markers)


def rename_columns(table: pa.Table, columns: Mapping[str, str] | None, source: str) -> pa.Table:
    """`table` with the user's columns renamed to hf_metric's (`data.columns`: {hf_metric name: user's name}); a
    column of hf_metric's name that another column replaces is left out."""
    if not columns:
        return table
    names = table.column_names
    for role, user in columns.items():
        if user not in names:
            raise DataError(f"{source}: column '{user}' (data.columns.{role}) is missing (found: {', '.join(names)})")
    renamed = {user: role for role, user in columns.items()}
    keep = [n for n in names if n in renamed or n not in columns]
    return table.select(keep).rename_columns([renamed.get(n, n) for n in keep])


def _read_file(path: str) -> pa.Table:
    kind = TABLE_SUFFIXES.get(Path(path).suffix.lower(), "parquet")
    if kind == "parquet":
        try:
            return pq.read_table(path, pre_buffer=False)  # pre-buffering a local file keeps a second copy of it
        except (pa.ArrowException, OSError, MemoryError) as err:
            raise read_error(path, err) from None
    return _load_dataset_table(kind, path, {"data_files": [path], "split": "train"})


def _load_dataset_table(builder: str, source: str, kwargs: dict[str, Any]) -> pa.Table:
    """`datasets.load_dataset(builder, **kwargs)` as an Arrow table (memory-mapped from the `datasets` cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(builder, **kwargs)
    except Exception as err:  # any loader failure is the user's source: say which, in one line
        lines = str(err).strip().splitlines()
        detail = lines[0] if lines else type(err).__name__
        raise DataError(f"{source}: cannot be loaded by datasets ({detail})") from None
    return _arrow_table(ds, source)


def _arrow_table(ds: Any, source: str) -> pa.Table:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{source}: holds several splits ({', '.join(ds)}); set data.dataset.split")
    if ds._indices is not None:  # a selection of rows: write them out once
        ds = ds.flatten_indices()
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    return table


def _check_schema(first: str, schema: pa.Schema, path: str, other: pa.Schema) -> None:
    """A shard must have the first shard's columns with the same types: say what differs, naming the shard."""
    if other.remove_metadata().equals(schema.remove_metadata()):
        return
    missing = [n for n in schema.names if n not in other.names]
    extra = [n for n in other.names if n not in schema.names]
    typed = [
        f"'{n}' is {other.field(n).type}, not {schema.field(n).type}"
        for n in schema.names
        if n in other.names and other.field(n).type != schema.field(n).type
    ]
    parts = [f"missing column(s) {', '.join(repr(n) for n in missing)}"] if missing else []
    parts += [f"extra column(s) {', '.join(repr(n) for n in extra)}"] if extra else []
    parts += typed or ([] if parts else ["column order differs"])
    raise DataError(f"{path}: schema differs from the first shard {first}: {'; '.join(parts)}")


def _like_first(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A column that is null in a whole shard was written without a type: it takes the first shard's type."""
    fixes = [
        (i, schema.field(name))
        for i, name in enumerate(table.column_names)
        if pa.types.is_null(table.schema.field(i).type) and name in schema.names
    ]
    for i, target in fixes:
        table = table.set_column(i, target.name, pa.nulls(table.num_rows, target.type))
    return table


def _absolute_media(table: pa.Table, path: str) -> pa.Table:
    """Relative image/audio paths of one shard resolved against its own folder (before shards are joined)."""
    for column in (IMAGE_COLUMN, AUDIO_COLUMN):
        if column in table.column_names:
            cells = normalize_media_column(table.column(column), os.path.dirname(os.path.abspath(path)))
            if isinstance(cells, str):
                raise DataError(f"{path}: column '{column}' {cells}")
            table = table.set_column(table.column_names.index(column), column, cells)
    return table


def read_paths(spec: str | list[str], columns: Mapping[str, str] | None = None) -> RawTable:
    """The rows of every file of `spec` (`expand_paths`), columns renamed (`rename_columns`), shards checked to
    share one schema."""
    files = expand_paths(spec)
    label = spec if isinstance(spec, str) else ", ".join(str(s) for s in spec)
    tables, starts, total = [], [], 0
    schema = None  # the first shard's (image/audio cells as {bytes, path}: shards may hold bytes or paths)
    for path in files:
        table = rename_columns(_read_file(path), columns, path)
        if len(files) > 1:
            table = _absolute_media(table, path)
        if schema is None:
            schema = table.schema
        else:
            table = _like_first(table, schema)
            if set(table.column_names) == set(schema.names):  # the same columns in another order
                table = table.select(schema.names)
            _check_schema(files[0], schema, path, table.schema)
        tables.append(table)
        starts.append(total)
        total += table.num_rows
    if len(files) == 1:
        return RawTable(tables[0], files[0], files, np.zeros(1, np.int64), os.path.dirname(os.path.abspath(files[0])))
    table = pa.concat_tables(tables)  # chunks side by side: no column is joined
    return RawTable(table, str(label), files, np.asarray(starts, np.int64))


def read_dataset(dataset_cfg: Any, split: str, columns: Mapping[str, str] | None = None) -> RawTable:
    """One split of `data.dataset`: a `save_to_disk` folder, a local folder or files that `datasets.load_dataset`
    reads (Parquet, CSV, JSON), or a Hub name (online only)."""
    path = dataset_cfg.path
    source = f"{path} (split {split})"
    if _is_saved_dataset(path):
        import datasets

        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split '{split}' (splits: {', '.join(ds)})")
            ds = ds[split]
        table = _arrow_table(ds, source)
    else:
        kwargs: dict[str, Any] = {"split": split}
        builder = path
        suffix = Path(path).suffix.lower()
        if os.path.isfile(path) and suffix in TABLE_SUFFIXES:
            builder, kwargs["data_files"] = TABLE_SUFFIXES[suffix], [path]
        else:
            kwargs.update(name=dataset_cfg.name, revision=dataset_cfg.revision)
        table = _load_dataset_table(builder, source, kwargs)
    table = rename_columns(table, columns, source)
    base_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return RawTable(table, source, [], np.zeros(1, np.int64), base_dir)


def read_training_rows(data_cfg: Any) -> RawTable:
    """The training rows of the config: `data.dataset` (its `split`) or `data.parquet_path`."""
    columns = getattr(data_cfg, "columns", None)
    dataset = getattr(data_cfg, "dataset", None)
    if dataset is not None:
        return read_dataset(dataset, dataset.split, columns)
    return read_paths(data_cfg.parquet_path, columns)


def read_validation_rows(data_cfg: Any) -> RawTable | None:
    """The explicit validation rows (`data.val_path` or `data.dataset.val_split`), or None: split by `val_ratio`."""
    columns = getattr(data_cfg, "columns", None)
    dataset = getattr(data_cfg, "dataset", None)
    if dataset is not None and dataset.val_split:
        return read_dataset(dataset, dataset.val_split, columns)
    val_path = getattr(data_cfg, "val_path", None)
    return read_paths(val_path, columns) if val_path else None
