"""Columns of any size: a column stays in the chunks Parquet read it in, and Python holds a bounded slice of it.

An Arrow `binary` or `string` array has 32-bit offsets, so one array holds at most 2 GB; `pyarrow.parquet` reads
a larger column as several chunks, and whatever joins them again (`combine_chunks`, `ChunkedArray.take`, the hash
that `datasets` computes of a table given without a fingerprint) fails with "offset overflow". So the data path
never joins a column: rows are dropped with `filter` (chunk by chunk), image/audio bytes are `large_binary`
(`media.MEDIA_TYPE`, 64-bit offsets, the cast shares the bytes), `datasets.Dataset` gets a fingerprint instead of
hashing the table, and cells reach Python `MAX_SLICE_BYTES` at a time. Training does not even filter: it selects
the usable rows of the memory-mapped column by index (`parquet.LabeledTable.source_dataset`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import DataError

MAX_SLICE_BYTES = 256 * 2**20
"""Encoded image/audio bytes turned into Python objects at once (header checks, evaluation, prediction)."""


def keep_rows(column: pa.ChunkedArray, keep: np.ndarray) -> pa.ChunkedArray:
    """The rows of `column` where `keep` is True, chunk by chunk (`take` would join the chunks into one array);
    the column itself, not a copy, when every row is kept."""
    if keep.all():
        return column
    return column.filter(pa.array(keep, pa.bool_()))


def row_slices(sizes: np.ndarray, max_bytes: int | None = None, max_rows: int | None = None) -> list[tuple[int, int]]:
    """Consecutive `(start, stop)` row ranges covering `sizes` (bytes per row), each at most `max_rows` rows and
    `max_bytes` bytes (default `MAX_SLICE_BYTES`); a row larger than `max_bytes` is a range of its own."""
    max_bytes = MAX_SLICE_BYTES if max_bytes is None else max_bytes
    n = len(sizes)
    max_rows = max(1, n if max_rows is None else max_rows)
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
    out, start = [], 0
    while start < n:
        before = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, before + max_bytes, side="right"))
        stop = min(max(stop, start + 1), start + max_rows, n)
        out.append((start, stop))
        start = stop
    return out


def dataset_from_table(table: Any) -> Any:
    """`datasets.Dataset` over `table` (a `pyarrow.Table`, or a `datasets` table such as memory-mapped columns
    beside in-memory ones) as it is (chunks kept, nothing copied). Without a fingerprint, `datasets`
    would hash the whole table, joining every column into one array: slow, twice the memory, and an offset
    overflow for a column over 2 GB."""
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    return datasets.Dataset(table, fingerprint=generate_random_fingerprint())


def read_error(path: str, err: BaseException) -> DataError:
    """A one-line `DataError` for a Parquet file that Arrow cannot read, saying what to do about it."""
    lines = str(err).strip().splitlines()
    detail = lines[0] if lines else type(err).__name__
    if isinstance(err, MemoryError):
        return DataError(f"{path}: not enough memory to read the file ({detail}); split it into smaller files")
    if isinstance(err, pa.ArrowCapacityError) or "overflow" in detail:
        return DataError(
            f"{path}: a column is too large for one Arrow array ({detail}); store it as large_binary / large_string "
            "or write the file with smaller row groups (pyarrow.parquet.write_table(..., row_group_size=256))"
        )
    return DataError(f"{path}: not a readable Parquet file ({detail}); check that pyarrow.parquet.read_table reads it")
