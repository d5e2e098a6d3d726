"""Building a gallery from a model and a labelled Parquet file, and the model fingerprint that ties them.

The file is streamed in record batches through the same reading and encoding path as `hf-metric predict`
(`predict.stream_outputs`), so enrolling a million photos holds one batch of inputs at a time (plus the
gallery's own embeddings). The fingerprint is a SHA-256 over the tensors that make the embedding (every
weight but the classification head's and the stored kNN / open-set statistics), read from the model's
safetensors files by name in sorted order: the same weights give the same fingerprint whatever the file
layout, and a retrain (another seed, another epoch) gives another one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .gallery import Gallery

NOT_EMBEDDING = ("head.", "knn_reference_", "open_set_")
"""Tensor name prefixes left out of the fingerprint: they do not change the embedding."""
EXPORT_FINGERPRINT_KEY = "model_fingerprint"
"""Written into an ONNX export's `hf_metric_export.json`, so that a gallery works with either backend."""


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 (hex) of the embedding weights of a model folder (module doc), or of the model an ONNX export
    was made from."""
    files = sorted(glob.glob(os.path.join(model_dir, "model*.safetensors")))
    if not files:
        info = os.path.join(model_dir, "hf_metric_export.json")
        if os.path.isfile(info):
            with open(info, encoding="utf-8") as fh:
                recorded = json.load(fh).get(EXPORT_FINGERPRINT_KEY)
            if recorded:
                return recorded
        raise ConfigError(f"--model {model_dir}: no model*.safetensors weights to fingerprint")
    tensors: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__" and not name.startswith(NOT_EMBEDDING):
                tensors[name] = (path, 8 + size, entry)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        path, start, entry = tensors[name]
        begin, end = entry["data_offsets"]
        digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
        with open(path, "rb") as fh:
            fh.seek(start + begin)
            remaining = end - begin
            while remaining:
                chunk = fh.read(min(remaining, 1 << 24))
                if not chunk:
                    raise ConfigError(f"{path}: truncated safetensors file")
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


def backend_fingerprint(backend: Any) -> str:
    """The fingerprint of the model a loaded backend runs (`TorchBackend` or `OnnxBackend`)."""
    folder = getattr(backend, "export_dir", None) or getattr(getattr(backend, "model", None), "name_or_path", None)
    if not folder:
        raise ConfigError("cannot fingerprint this model: load it from a folder (load_backend(DIR))")
    return model_fingerprint(str(folder))


def load_gallery_for(directory: str, model_dir: str) -> Gallery:
    """The gallery in `directory`, refused in one line unless the model in `model_dir` built it."""
    gallery = Gallery.load(directory)
    gallery.check_model(model_fingerprint(model_dir), directory)
    return gallery


@dataclass
class SourceColumns:
    """Which columns of an enrolment or query file hold the label, the group and the row id."""

    label: str = "label"
    group: str = "group"
    row_id: str = "id"


@dataclass
class EmbeddedRows:
    """A streamed file's embeddings (L2-normalised float32), labels (None without a label column), groups
    (None without a group column) and row ids."""

    embeddings: np.ndarray
    labels: np.ndarray | None
    groups: np.ndarray | None
    row_ids: np.ndarray


def embed_rows(
    path: str,
    backend: Any,
    featurizer: Any,
    settings: Any = None,
    columns: SourceColumns | None = None,
    need_labels: bool = True,
) -> EmbeddedRows:
    """Stream `path` through the model (as `predict` does) keeping the embeddings and the label, group and id
    columns; a null or empty label is a one-line `DataError` naming the row."""
    from .predict import StreamSettings, open_parquet, stream_outputs

    columns = columns or SourceColumns()
    settings = settings or StreamSettings()
    names = open_parquet(path).schema_arrow.names
    if need_labels and columns.label not in names:
        raise DataError(f"{path}: column '{columns.label}' is missing (found: {', '.join(names)})")
    has_labels, has_groups, has_ids = (c in names for c in (columns.label, columns.group, columns.row_id))
    parts: list[np.ndarray] = []
    labels: list[Any] = []
    groups: list[Any] = []
    ids: list[Any] = []
    offset = 0
    base = os.path.basename(path)
    for batch, outputs in stream_outputs(path, backend, featurizer, settings):
        parts.append(np.asarray(outputs.embeddings, dtype=np.float32))
        if has_labels:
            labels += _label_values(path, columns.label, batch.column(columns.label), offset)
        if has_groups:
            groups += batch.column(columns.group).cast(pa.string()).to_pylist()
        if has_ids:
            ids += batch.column(columns.row_id).cast(pa.string()).to_pylist()
        else:
            ids += [f"{base}#{offset + i}" for i in range(batch.num_rows)]
        offset += batch.num_rows
    if not parts:
        raise DataError(f"{path}: the file has no rows")
    return EmbeddedRows(
        np.concatenate(parts),
        np.asarray(labels, dtype=object) if has_labels else None,
        np.asarray(groups, dtype=object) if has_groups else None,
        np.asarray(ids, dtype=object),
    )


def _label_values(path: str, column: str, values: pa.Array, offset: int) -> list[str]:
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    text = values.cast(pa.string())
    bad = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0))
    row = pc.index(pc.fill_null(bad, True), True).as_py()
    if row >= 0:
        raise DataError(f"{path}: column '{column}', row {offset + row}: label is null or empty")
    return [s.strip() for s in text.to_pylist()]


def load_model(model: Any, data_path: str, featurizer: Any = None) -> tuple[Any, Any]:
    """(backend, featurizer) from a model folder or an already loaded backend; the featurizer of the file's input
    column by default (the model's processor, text cut at 128 tokens)."""
    backend = model
    if isinstance(model, (str, os.PathLike)):
        from .backends import load_backend

        backend = load_backend(os.fspath(model))
    if featurizer is None:
        from ..data.featurize import featurizer_for
        from ..data.parquet import input_column_of

        folder = getattr(backend, "export_dir", None) or backend.model.name_or_path
        featurizer = featurizer_for(str(folder), input_column_of(data_path))
    return backend, featurizer


def gallery_from_parquet(
    model: Any,
    path: str,
    featurizer: Any = None,
    settings: Any = None,
    match: str = "row",
    index: dict[str, Any] | None = None,
    label_column: str = "label",
    group_column: str = "group",
    id_column: str = "id",
) -> Gallery:
    """A `Gallery` of every row of `path` (`Gallery.from_parquet`); `index` defaults to the model's
    `knn_index` setting."""
    backend, featurizer = load_model(model, path, featurizer)
    rows = embed_rows(path, backend, featurizer, settings, SourceColumns(label_column, group_column, id_column))
    if index is None:
        config = getattr(getattr(backend, "model", None), "config", None)
        index = (
            getattr(config, "knn_index", None)
            if config is not None
            else getattr(backend, "config", {}).get("knn_index")
        )
    return Gallery(
        rows.embeddings, rows.labels, rows.groups, rows.row_ids, backend_fingerprint(backend), match, index or None
    )
