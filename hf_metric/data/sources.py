"""Where the rows come from: one Parquet file, a folder or glob of shards, a list of them, CSV / JSON Lines files,
or a `datasets` source; the user's column names mapped to the ones hf_metric reads (`data.columns`).

Every source becomes one `RawTable`: an Arrow table plus where each of its rows came from, so a bad row found
later is named by its shard and its row within that shard. Shards are read in a fixed order (sorted within a
folder or glob, a list as given), so the same rows in shards or in one file prepare exactly the same data.

Files (`read_paths`) are streamed record batch by record batch into one memory-mapped Arrow file
(`arrow_cache`), never read whole: image/audio cells are turned into `{bytes, path}` structs and their headers
checked on the way, batch by batch; a second run of the same files maps that file at once. `datasets` sources
are memory-mapped from the `datasets` cache already.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..optional import available
from . import arrow_cache
from .chunked import read_error, row_slices
from .media import (
    AUDIO_COLUMN,
    BACKENDS,
    IMAGE_COLUMN,
    MEDIA_COLUMNS,
    MEDIA_TYPE,
    cell_bytes,
    check_cells,
    normalize_media_column,
)

TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
"""File extensions a path source reads, and the `datasets` builder of the text formats."""
READ_BUFFER_BYTES = 4 * 2**20
"""Parquet column chunks are read through a buffer of this size, a data page at a time (without one, Arrow's
reader holds a row group's whole column chunk). A page holds up to `write_batch_size` rows (pyarrow: 1024) of
a row group: 128 MB of 128 kB clips."""
CHECKS_COLUMN = "__hf_metric_header_check__"
"""Cache column: the header check of each image/audio cell with bytes (`media.check_cells`)."""
CHECKERS = {"PIL": "Pillow", "soundfile": "soundfile"}
"""Header checkers (module: distribution): their versions are part of the cache's fingerprint."""


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
    checks: pa.ChunkedArray | None = None
    """Header check of each image/audio cell with bytes, made while the rows were cached (`media.check_cells`)."""
    mapped: str | None = None
    """The memory-mapped Arrow file whose columns `table` holds (files: `arrow_cache`), or None."""

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


@dataclass
class _Shard:
    """One file of a path source, opened but not read: its columns and, on demand, its record batches."""

    path: str
    schema: pa.Schema
    num_rows: int
    batches: Callable[[], Iterator[pa.RecordBatch]]


def _open_shard(path: str) -> _Shard:
    kind = TABLE_SUFFIXES.get(Path(path).suffix.lower(), "parquet")
    if kind == "parquet":
        return parquet_shard(path)
    table = _load_dataset_table(kind, path, {"data_files": [path], "split": "train"})
    return _Shard(path, table.schema, table.num_rows, lambda: iter(table.to_batches()))


def parquet_shard(path: str) -> _Shard:
    """A Parquet file read row group by row group, each in record batches of about `arrow_cache.BATCH_BYTES`
    (from the footer's sizes): memory follows the data page and the batch, not the file."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, MemoryError) as err:
        raise read_error(path, err) from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            # pre-buffering a local file keeps a second copy of it; the buffer reads a column chunk piece by piece
            reader = pq.ParquetFile(path, metadata=meta, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                rows = arrow_cache.BATCH_BYTES * group.num_rows // max(1, group.total_byte_size)
                yield from reader.iter_batches(batch_size=max(1, min(rows, group.num_rows)), row_groups=[i])
        except (pa.ArrowException, OSError, MemoryError) as err:
            raise read_error(path, err) from None

    return _Shard(path, schema, meta.num_rows, batches)


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


def _absolute_media(table: pa.Table, path: str, strict: bool = True) -> pa.Table:
    """Image/audio cells of one shard as `{bytes, path}` structs, relative paths resolved against its own folder
    (before shards are joined). A column of another type stops a shard (`strict`); one file keeps it as it is,
    for validation to name it in its turn."""
    for column in (IMAGE_COLUMN, AUDIO_COLUMN):
        if column in table.column_names:
            cells = normalize_media_column(table.column(column), os.path.dirname(os.path.abspath(path)))
            if isinstance(cells, str):
                if not strict:
                    continue
                raise DataError(f"{path}: column '{column}' {cells}")
            table = table.set_column(table.column_names.index(column), column, cells)
    return table


def read_paths(spec: str | list[str], columns: Mapping[str, str] | None = None) -> RawTable:
    """The rows of every file of `spec` (`expand_paths`), columns renamed (`rename_columns`), shards checked to
    share one schema: memory-mapped from the data cache (`arrow_cache`), written first when the files are new."""
    files = expand_paths(spec)
    label = spec if isinstance(spec, str) else ", ".join(str(s) for s in spec)
    checkers = {dist: _version(dist) for dist in CHECKERS.values()}
    path = arrow_cache.cache_path(files, {"columns": dict(columns or {}), "checkers": checkers})
    found = arrow_cache.open_mapped(path)
    if found is None:
        arrow_cache.write(path, *_stream(files, columns))
        found = arrow_cache.open_mapped(path)
        if found is None:
            raise DataError(f"{path}: the data cache just written cannot be read; delete it and run again")
    table, meta = found
    checks = table.column(CHECKS_COLUMN) if CHECKS_COLUMN in table.column_names else None
    table = table.drop_columns([CHECKS_COLUMN]) if checks is not None else table
    if len(files) == 1:
        base_dir = os.path.dirname(os.path.abspath(files[0]))
        return RawTable(table, files[0], files, np.zeros(1, np.int64), base_dir, checks, str(path))
    return RawTable(table, str(label), files, np.asarray(meta["starts"], np.int64), ".", checks, str(path))


def _stream(files: list[str], columns: Mapping[str, str] | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch], dict]:
    """`(schema, record batches, meta)` of the rows of `files` as the cache holds them; every shard's schema is
    checked against the first's before any row is read."""
    several = len(files) > 1
    shards = [_open_shard(path) for path in files]
    schema = None  # the first shard's (image/audio cells as {bytes, path}: shards may hold bytes or paths)
    for shard in shards:
        shaped = _absolute_media(rename_columns(shard.schema.empty_table(), columns, shard.path), shard.path, several)
        if schema is None:
            schema = shaped.schema.remove_metadata()
        else:
            _check_schema(files[0], schema, shard.path, _as_first(shaped, schema).schema)
    checked = _checked_column(schema)
    out = schema.append(pa.field(CHECKS_COLUMN, pa.string())) if checked else schema
    starts = np.cumsum([0] + [shard.num_rows for shard in shards[:-1]]).tolist()

    def batches() -> Iterator[pa.RecordBatch]:
        for i, shard in enumerate(shards):
            for batch in shard.batches():
                table = rename_columns(pa.Table.from_batches([batch]), columns, shard.path)
                table = _absolute_media(table, shard.path, several)
                table = _as_first(table, schema) if i else table
                for part in _bounded(table):
                    arrays = part.columns + ([check_cells(checked, part.column(checked))] if checked else [])
                    yield pa.RecordBatch.from_arrays(arrays, schema=out)

    return out, batches(), {"starts": starts}


def _as_first(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A later shard's table with the first shard's column order, its all-null columns given the first's types."""
    table = _like_first(table, schema)
    if set(table.column_names) == set(schema.names):  # the same columns in another order
        table = table.select(schema.names)
    return table


def _checked_column(schema: pa.Schema) -> str | None:
    """The image/audio input column whose headers are checked while caching: the one input column, already
    `{bytes, path}` cells, its checker installed (else validation checks it, or names what is wrong)."""
    names = schema.names
    media = [c for c in MEDIA_COLUMNS if c in names]
    if len(media) != 1 or "text" in names or schema.field(media[0]).type != MEDIA_TYPE:
        return None
    return media[0] if available(BACKENDS[media[0]][0]) else None


def _bounded(table: pa.Table) -> Iterator[pa.RecordBatch]:
    """`table` in record batches of at most `arrow_cache.BATCH_BYTES` of image/audio bytes (a larger cell alone)."""
    sizes = np.zeros(table.num_rows, np.int64)
    for column in (c for c in MEDIA_COLUMNS if c in table.column_names):
        sizes += cell_bytes(table.column(column))
    for start, stop in row_slices(sizes, max_bytes=arrow_cache.BATCH_BYTES):
        yield from table.slice(start, stop - start).to_batches()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


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
