"""Label or embed a Parquet file of any size: record batches in, record batches out, one file renamed at the end.

The input is read with `ParquetFile.iter_batches` and written with a `ParquetWriter` (or into a memory-mapped
`.npy`), so memory holds one record batch and its outputs, never the file; the image/audio cells of a record
batch reach Python at most `chunked.MAX_SLICE_BYTES` at a time. Every input column is kept, in
order, and the output appears whole (atomic rename) or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..data.chunked import read_error, row_slices
from ..data.media import cell_bytes
from ..data.parquet import check_input_values, input_column_of
from ..errors import DataError
from .backends import ModelOutputs, run_batches

PREDICTION_COLUMNS = ("predicted_label", "score", "top_labels", "top_scores", "head_label", "knn_label")
"""Columns `predict_file` adds; `knn_label` is null when the model stores no kNN rows."""
EMBEDDING_COLUMN = "embedding"


@dataclass
class StreamSettings:
    """How a file is streamed: rows read per record batch, rows per model call, and the progress bar."""

    read_batch_rows: int = 4096
    batch_size: int = 64
    progress: bool = True


def open_parquet(path: str) -> pq.ParquetFile:
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path, pre_buffer=False)  # pre-buffered row groups would double the batch's memory
    except (pa.ArrowException, OSError, MemoryError) as err:
        raise read_error(path, err) from None


def stream_outputs(
    path: str, backend: Any, featurizer: Any, settings: StreamSettings
) -> Iterator[tuple[pa.RecordBatch, ModelOutputs]]:
    """`(record batch, its model outputs)` for the whole file, in order, with a progress bar."""
    from tqdm.auto import tqdm

    source = open_parquet(path)
    column = input_column_of(path, source.schema_arrow.names)
    offset = 0
    with tqdm(total=source.metadata.num_rows, unit="rows", disable=not settings.progress) as bar:
        for batch in _record_batches(path, source, settings.read_batch_rows):
            for start, stop in row_slices(cell_bytes(batch.column(column))):
                part = batch.slice(start, stop - start)  # zero-copy
                values = check_input_values(path, column, part.column(column), offset)
                outputs = run_batches(backend, featurizer, values, settings.batch_size)
                del values  # the cells of one slice at a time, not two
                yield part, outputs
                offset += part.num_rows
                bar.update(part.num_rows)


def _record_batches(path: str, source: pq.ParquetFile, rows: int) -> Iterator[pa.RecordBatch]:
    """`source.iter_batches`, with a file that Arrow cannot read past some row ending as a one-line error."""
    batches = source.iter_batches(batch_size=rows)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, MemoryError) as err:
            raise read_error(path, err) from None
        if batch is None:
            return
        yield batch


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def prediction_columns(outputs: ModelOutputs, names: np.ndarray, top_k: int) -> dict[str, pa.Array]:
    """The added columns of one batch: the (fused) prediction and its probability, the top-k labels and
    probabilities, the head's own label and the kNN vote's label."""
    probs = _softmax(outputs.logits.astype(np.float64))
    k = min(top_k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, top, axis=1).astype(np.float32)
    knn = outputs.knn_probabilities
    return {
        "predicted_label": pa.array(names[top[:, 0]].tolist(), pa.string()),
        "score": pa.array(top_probs[:, 0], pa.float32()),
        "top_labels": pa.array(names[top].tolist(), pa.list_(pa.string())),
        "top_scores": pa.array(list(top_probs), pa.list_(pa.float32())),
        "head_label": pa.array(names[outputs.head_logits.argmax(axis=1)].tolist(), pa.string()),
        "knn_label": pa.array(
            names[knn.argmax(axis=1)].tolist() if knn is not None else [None] * len(probs), pa.string()
        ),
    }


OPEN_SET_COLUMNS = ("is_out_of_scope", "open_set_score")
"""Added by `predict` when the model has an open-set threshold: rejected rows get the out-of-scope label."""


def open_set_columns(
    columns: dict[str, pa.Array], scores: np.ndarray, threshold: float, label: str
) -> dict[str, pa.Array]:
    """`columns` with the rejection applied: `predicted_label` becomes `label` where the score is below the
    threshold, plus `is_out_of_scope` and `open_set_score`."""
    rejected = scores < threshold
    predicted = np.where(rejected, label, np.asarray(columns["predicted_label"].to_pylist(), dtype=object))
    return {
        **columns,
        "predicted_label": pa.array(predicted.tolist(), pa.string()),
        "is_out_of_scope": pa.array(rejected, pa.bool_()),
        "open_set_score": pa.array(scores.astype(np.float32), pa.float32()),
    }


def _check_no_clash(path: str, columns: list[str], added: tuple[str, ...]) -> None:
    clash = [c for c in added if c in columns]
    if clash:
        raise DataError(f"{path}: column '{clash[0]}' already exists; rename it (the output adds {', '.join(added)})")


def write_parquet(path: str, tmp: str, stream: Iterator[tuple[pa.RecordBatch, Any]], columns) -> int:
    """Write every record batch of `stream` (batch, what was computed for it) to `tmp` with the columns
    `columns(batch, computed)` appended; returns rows. `path` names the input in the error for an empty file."""
    writer, rows = None, 0
    try:
        for batch, outputs in stream:
            table = pa.Table.from_batches([batch])
            for name, column in columns(batch, outputs).items():
                table = table.append_column(name, column)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise DataError(f"{path}: the file has no rows")
    return rows


def predict_file(
    path: str,
    out: str,
    backend: Any,
    featurizer: Any,
    top_k: int = 5,
    settings: StreamSettings | None = None,
    gallery: Any = None,
) -> int:
    """Write `out` (Parquet): every column of `path` plus `PREDICTION_COLUMNS`, row order kept; returns rows.
    With `gallery` (a `gallery_predict.GalleryColumns`), also the gallery match columns of each row."""
    settings = settings or StreamSettings()
    rejects = getattr(backend, "rejects", False)
    added = PREDICTION_COLUMNS + (OPEN_SET_COLUMNS if rejects else ()) + (gallery.names if gallery else ())
    _check_no_clash(path, open_parquet(path).schema_arrow.names, added)
    names = np.asarray([backend.id2label[i] for i in range(len(backend.id2label))], dtype=object)
    if gallery is not None:
        gallery.check_file(path, open_parquet(path).schema_arrow.names)

    def columns(batch: pa.RecordBatch, outputs: ModelOutputs) -> dict[str, pa.Array]:
        out = prediction_columns(outputs, names, top_k)
        if rejects:
            out = open_set_columns(out, backend.open_set_scores(outputs), *backend.open_set_rule())
        return out if gallery is None else {**out, **gallery(batch, outputs)}

    with atomic_path(out) as tmp:
        return write_parquet(path, tmp, stream_outputs(path, backend, featurizer, settings), columns)


def embed_file(path: str, out: str, backend: Any, featurizer: Any, settings: StreamSettings | None = None) -> int:
    """Write the L2-normalised embeddings of `path`: `.npy` (float32, rows x dim) or Parquet (every input
    column plus `embedding`, a list<float32>); returns rows."""
    settings = settings or StreamSettings()
    rows = 0
    with atomic_path(out) as tmp:
        if out.endswith(".npy"):
            array = None
            total = open_parquet(path).metadata.num_rows
            for _batch, outputs in stream_outputs(path, backend, featurizer, settings):
                emb = outputs.embeddings.astype(np.float32)
                if array is None:
                    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, emb.shape[1]))
                array[rows : rows + len(emb)] = emb
                rows += len(emb)
            if array is None:
                raise DataError(f"{path}: the file has no rows")
            array.flush()
            del array
            return rows
        _check_no_clash(path, open_parquet(path).schema_arrow.names, (EMBEDDING_COLUMN,))
        stream = stream_outputs(path, backend, featurizer, settings)
        return write_parquet(path, tmp, stream, lambda _batch, outputs: {EMBEDDING_COLUMN: _embedding_column(outputs)})


def _embedding_column(outputs: ModelOutputs) -> pa.Array:
    emb = outputs.embeddings.astype(np.float32)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    return fixed.cast(pa.list_(pa.float32()))
