"""Read and validate a labelled Parquet file: labels encoded by name, masks checked, unusable rows dropped.

The file is checked column by column with Arrow compute before anything is trained, so a bad row stops the
run at once with a one-line `DataError` naming the file, the column and the first bad row (0-based, as pandas
and Arrow count). Rows in neither loss are dropped; labels of any type are encoded to contiguous ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError
from .chunked import dataset_from_table, keep_rows, read_error, row_slices
from .media import (
    AUDIO_COLUMN,
    IMAGE_COLUMN,
    MEDIA_TYPE,
    SOURCE_ROW,
    cell_bytes,
    cell_problem,
    normalize_media_column,
    require_backend,
)
from .sources import RawTable, RowLocator, read_paths

logger = logging.getLogger(__name__)

TEXT_COLUMN = "text"
INPUT_COLUMNS = (TEXT_COLUMN, IMAGE_COLUMN, AUDIO_COLUMN)
"""Exactly one of these is in a file: it decides the featurizer (`featurize.FEATURIZERS`)."""
LABEL_COLUMN = "label"
GROUP_COLUMN = "group"
MASK_COLUMNS = ("metric_mask", "classifier_mask")
OUT_OF_SCOPE_ID = -1
"""Label id of out-of-scope rows (`data.out_of_scope_label`); the same as `hf_metric.model.open_set_scores`."""
"""Columns (besides the featurizer's) that the model's forward receives."""


@dataclass
class LabeledTable:
    """A validated file: usable rows only, with encoded `labels` and 0/1 int8 masks. The input column is kept
    as the source holds it, every row (memory-mapped for files): `table` copies the usable rows' cells out of it
    only when asked, training selects them by index instead (`source_dataset`)."""

    columns: pa.Table
    """`labels`, `metric_mask`, `classifier_mask` (and `source_row` for image/audio) of the usable rows."""
    id2label: dict[int, str]
    dropped_rows: int = 0
    source: str = ""
    class_groups: dict[int, set[str]] | None = None
    """Groups each class appears in (from the optional `group` column; nulls ignored), or None without one."""
    input_column: str = "text"
    bad_rows: int = 0
    """Image/audio rows skipped as unreadable (`data.skip_bad_rows`)."""
    where: RowLocator | None = None
    """`row -> (file, row in it)` for a row of the source (`SOURCE_ROW` of an image/audio row)."""
    inputs: pa.ChunkedArray | None = None
    """The input column of every row of the source, usable or not (image/audio as `{bytes, path}` cells)."""
    rows: np.ndarray | None = None
    """The source row of each usable row."""
    mapped: str | None = None
    """The memory-mapped Arrow file whose column `input_column` is `inputs` (files: the data cache), or None."""

    @property
    def labels(self) -> np.ndarray:
        return self.columns.column("labels").to_numpy()

    @cached_property
    def table(self) -> pa.Table:
        """The usable rows, input column first: a copy of its cells when rows were dropped."""
        keep = np.zeros(len(self.inputs), dtype=bool)
        keep[self.rows] = True
        small = {name: self.columns.column(name) for name in self.columns.column_names}
        return pa.table({self.input_column: keep_rows(self.inputs, keep), **small})

    def source_dataset(self) -> Any:
        """Every row of the source as a `datasets.Dataset` (select `rows`, or some of them, to train): the input
        column as the source holds it, nothing copied; labels and masks of the usable rows, zeros elsewhere.
        From a memory-mapped file it stays mapped: a DataLoader worker unpickles it as the file's path."""
        from datasets.table import InMemoryTable, MemoryMappedTable, concat_tables

        full = {}
        for name in self.columns.column_names:
            values = self.columns.column(name).to_numpy()
            full[name] = np.zeros(len(self.inputs), dtype=values.dtype)
            full[name][self.rows] = values
        if self.mapped is not None:
            inputs = MemoryMappedTable.from_file(self.mapped).select([self.input_column])
        else:
            inputs = InMemoryTable(pa.table({self.input_column: self.inputs}))
        table = concat_tables([inputs, InMemoryTable(pa.table(full))], axis=1)
        return dataset_from_table(table)


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first True in a boolean array (nulls count as False), or -1."""
    return pc.index(pc.fill_null(mask, False), True).as_py()


def _fail(path: str | RawTable, column: str, row: int, problem: str) -> DataError:
    """A bad row, named by its file (the shard, for sharded data) and its row in that file."""
    if isinstance(path, RawTable):
        path, row = path.where(row)
    return DataError(f"{path}: column '{column}', row {row}: {problem}")


def input_column_of(path: str | Path, column_names: list[str] | None = None) -> str:
    """The file's one input column (`text`, `image` or `audio`), read from the schema alone."""
    path = str(path)
    if column_names is None:
        if not Path(path).is_file():
            raise DataError(f"{path}: file not found")
        try:
            column_names = pq.read_schema(path).names
        except (pa.ArrowException, OSError, MemoryError) as err:
            raise read_error(path, err) from None
    found = [c for c in INPUT_COLUMNS if c in column_names]
    if not found:
        raise DataError(
            f"{path}: column '{TEXT_COLUMN}' is missing (an input column is needed: one of "
            f"{', '.join(repr(c) for c in INPUT_COLUMNS)}; found: {', '.join(column_names)})"
        )
    if len(found) > 1:
        names = ", ".join(repr(c) for c in found)
        raise DataError(f"{path}: columns {names}: the file holds several input columns; keep exactly one")
    return found[0]


def read_labeled_parquet(
    path: str | Path | RawTable,
    label2id: Mapping[str, int] | None = None,
    *,
    out_of_scope_label: str | None = None,
    skip_bad_rows: bool = False,
    known_as: str = "the model",
) -> LabeledTable:
    """Read and validate one Parquet file (or rows already read: `sources.RawTable`, shards or a `datasets`
    source); raise `DataError` on the first problem found, naming the file (the shard) and the row.

    Labels are encoded anew (sorted names -> 0..C-1) unless `label2id` fixes the mapping (a trained model's
    labels): then a held-out file keeps the model's ids, whatever subset or order of classes it holds.

    Rows labelled `out_of_scope_label` (compared as text) belong to no class: they get the label id
    `OUT_OF_SCOPE_ID` (-1), which every loss part skips, and serve the open-set evaluation. With `skip_bad_rows`,
    image/audio rows whose header cannot be read are dropped and counted (`bad_rows`).
    """
    raw = path if isinstance(path, RawTable) else read_paths(str(path))
    path, table = raw.source, raw.table
    input_column = input_column_of(path, table.column_names)
    if LABEL_COLUMN not in table.column_names:
        raise DataError(f"{path}: column '{LABEL_COLUMN}' is missing (found: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise DataError(f"{path}: column '{input_column}': the file has no rows")

    masks = {}
    for column in MASK_COLUMNS:
        if column not in table.column_names:
            logger.warning("%s: no '%s' column; every row counts as %s=1", path, column, column)
            masks[column] = pa.array(np.ones(table.num_rows, dtype=np.int8))
        else:
            masks[column] = _validate_mask(raw, column, table.column(column))
    used = pc.or_kleene(pc.equal(masks["metric_mask"], 1), pc.equal(masks["classifier_mask"], 1))
    if input_column == TEXT_COLUMN:
        inputs = _validate_text(raw, table.column(TEXT_COLUMN), used)
        bad_rows = np.zeros(table.num_rows, dtype=bool)
    else:
        inputs, bad_rows = _validate_media(raw, input_column, table.column(input_column), used, skip_bad_rows)

    label = table.column(LABEL_COLUMN)
    if pa.types.is_dictionary(label.type):
        label = label.cast(label.type.value_type)
    is_str = pa.types.is_string(label.type) or pa.types.is_large_string(label.type)
    if not (is_str or pa.types.is_integer(label.type)):
        raise DataError(f"{path}: column '{LABEL_COLUMN}' must hold integers or strings, found type {label.type}")
    missing = pc.is_null(label)
    if is_str:
        missing = pc.or_kleene(missing, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(label)), 0))
    row = _first_true(pc.and_kleene(missing, used))
    if row >= 0:
        raise _fail(raw, LABEL_COLUMN, row, "label is null but the row is in a loss (a mask is 1)")

    in_loss = np.asarray(pc.fill_null(used, False).to_numpy(zero_copy_only=False), dtype=bool)
    keep = in_loss & ~bad_rows
    dropped = int((~in_loss).sum())
    if not keep.any():
        raise DataError(f"{path}: columns 'metric_mask', 'classifier_mask': no usable row (every row has both masks 0)")
    if dropped:
        logger.info("%s: dropped %d rows with metric_mask=0 and classifier_mask=0", path, dropped)
    rows = np.flatnonzero(keep)
    keep_idx = pa.array(rows)
    label = keep_rows(label, keep)
    raw_labels = label.to_numpy(zero_copy_only=False)
    if is_str:
        raw_labels = np.array([s.strip() for s in raw_labels], dtype=object)
    oos = np.zeros(len(raw_labels), dtype=bool)
    if out_of_scope_label is not None:
        oos = np.array([str(v) == out_of_scope_label for v in raw_labels.tolist()], dtype=bool)
        if oos.all():
            raise DataError(
                f"{path}: column '{LABEL_COLUMN}': every row has the out-of-scope label {out_of_scope_label!r}"
            )
    if label2id is None:
        classes = sorted(set(raw_labels[~oos].tolist()))
        label2id = {c: i for i, c in enumerate(classes)}
    else:
        raw_labels = np.array([str(v) for v in raw_labels.tolist()], dtype=object)
        _check_known_labels(path, raw_labels[~oos], label2id, known_as)
        classes = sorted(label2id, key=label2id.__getitem__)
    encoded = np.fromiter(
        (OUT_OF_SCOPE_ID if o else label2id[v] for v, o in zip(raw_labels.tolist(), oos, strict=True)),
        dtype=np.int64,
        count=len(raw_labels),
    )
    columns = {
        "labels": pa.array(encoded),
        "metric_mask": masks["metric_mask"].take(keep_idx),
        "classifier_mask": masks["classifier_mask"].take(keep_idx),
    }
    if input_column != TEXT_COLUMN:
        columns[SOURCE_ROW] = keep_idx.cast(pa.int64())
    # the cached column itself, when it holds the cells as validated (`{bytes, path}`, paths absolute)
    mapped = raw.mapped if input_column != TEXT_COLUMN and table.column(input_column).type == MEDIA_TYPE else None
    class_groups = None
    if GROUP_COLUMN in table.column_names:
        groups = keep_rows(table.column(GROUP_COLUMN), keep).cast(pa.string()).to_pylist()
        class_groups = {i: set() for i in range(len(classes))}
        for label_id, group in zip(encoded.tolist(), groups, strict=True):
            if group is not None and label_id != OUT_OF_SCOPE_ID:
                class_groups[label_id].add(group)
    id2label = {i: str(c) for c, i in label2id.items()}
    return LabeledTable(
        pa.table(columns),
        id2label,
        dropped,
        path,
        class_groups,
        input_column,
        int(bad_rows.sum()),
        raw.locator,
        inputs,
        rows,
        mapped,
    )


def _validate_text(raw: RawTable, text: pa.ChunkedArray, used: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(text.type):
        text = text.cast(text.type.value_type)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise DataError(f"{raw}: column '{TEXT_COLUMN}' must hold strings, found type {text.type}")
    bad = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0))
    row = _first_true(pc.and_kleene(bad, used))
    if row >= 0:
        raise _fail(raw, TEXT_COLUMN, row, "text is null or empty")
    return text


MEDIA_CHECK_CHUNK = 1024
"""Rows whose cells are held in Python at once while their headers are checked (and at most
`chunked.MAX_SLICE_BYTES` of bytes); cells of rows in no loss are never turned into Python objects."""


def _validate_media(
    raw: RawTable, column: str, values: pa.ChunkedArray, used: pa.ChunkedArray, skip_bad_rows: bool
) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Cells as `{bytes, path}` structs, and which used rows are unreadable (an error unless `skip_bad_rows`).
    Headers checked while the rows were cached (`raw.checks`) are not read again: only paths, and cells cached
    without a check, are."""
    require_backend(column)
    path = raw.source
    cells = normalize_media_column(values, raw.base_dir)
    if isinstance(cells, str):
        raise DataError(f"{path}: column '{column}' {cells}")
    in_loss = np.asarray(pc.fill_null(used, False).to_numpy(zero_copy_only=False), dtype=bool)
    unchecked, failed = np.ones(len(cells), dtype=bool), np.zeros(len(cells), dtype=bool)
    if raw.checks is not None:
        unchecked = np.asarray(pc.is_null(raw.checks).to_numpy(zero_copy_only=False), dtype=bool)
        failed = np.asarray(pc.fill_null(pc.not_equal(raw.checks, ""), False).to_numpy(zero_copy_only=False), bool)
    read = in_loss & unchecked  # rows whose cells are read now
    bad = np.zeros(len(cells), dtype=bool)
    for start, stop in row_slices(np.where(read, cell_bytes(cells), 0), max_rows=MEDIA_CHECK_CHUNK):
        rows = start + np.flatnonzero((read | (in_loss & failed))[start:stop])
        if not len(rows):
            continue
        part = cells.slice(start, stop - start)
        part = part if read[start:stop].all() else part.filter(pa.array(read[start:stop]))
        fresh = iter(part.to_pylist())
        for row in rows.tolist():
            problem = cell_problem(column, next(fresh)) if read[row] else raw.checks[row].as_py()
            if problem is None:
                continue
            if not skip_bad_rows:
                raise _fail(raw, column, row, f"{problem} (data.skip_bad_rows: true skips such rows)")
            bad[row] = True
            shard, shard_row = raw.where(row)
            logger.warning("%s: column '%s', row %d: %s; skipped", shard, column, shard_row, problem)
    if bad.any():
        logger.warning("%s: skipped %d unreadable %s rows (data.skip_bad_rows)", path, int(bad.sum()), column)
    return cells, bad


def check_input_values(
    path: str, column: str, values: pa.Array | pa.ChunkedArray, offset: int = 0, kind: str | None = None
) -> list[Any]:
    """The input column of rows to predict (one record batch, starting at row `offset` of the file) as a list:
    texts, or image/audio cells as `{bytes, path}` (paths made absolute); a `DataError` names the first row that
    is null or empty (a media cell that cannot be decoded is named when it is decoded). `kind`: the input kind
    (text, image, audio) when the column has another name (`image_a` of a pairs file)."""
    if (kind or column) != TEXT_COLUMN:
        require_backend(kind or column)
        chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
        cells = normalize_media_column(chunked, os.path.dirname(os.path.abspath(path)))
        if isinstance(cells, str):
            raise DataError(f"{path}: column '{column}' {cells}")
        cells = cells.to_pylist()
        row = next((i for i, c in enumerate(cells) if c["bytes"] is None and c["path"] is None), -1)
        if row >= 0:
            raise _fail(path, column, offset + row, "cell is null (no bytes, no path)")
        return cells
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(f"{path}: column '{column}' must hold strings, found type {values.type}")
    row = _first_true(pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0)))
    if row >= 0:
        raise _fail(path, column, offset + row, "text is null or empty")
    return values.to_pylist()


def _check_known_labels(path: str, names: np.ndarray, label2id: Mapping[str, int], known_as: str) -> None:
    unknown = sorted(set(names.tolist()) - set(label2id))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise DataError(f"{path}: column '{LABEL_COLUMN}': {len(unknown)} label(s) unknown to {known_as}: {shown}")


def _validate_mask(raw: RawTable, column: str, values: pa.ChunkedArray) -> pa.Array:
    if not (pa.types.is_integer(values.type) or pa.types.is_boolean(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"{raw}: column '{column}' must hold 0/1 values, found type {values.type}")
    as_float = values.cast(pa.float64())
    bad = pc.or_kleene(pc.is_null(as_float), pc.invert(pc.is_in(as_float, value_set=pa.array([0.0, 1.0]))))
    row = _first_true(bad)
    if row >= 0:
        raise _fail(raw, column, row, f"mask must be 0 or 1, got {values[row].as_py()!r}")
    return pa.array(as_float.to_numpy().astype(np.int8))
