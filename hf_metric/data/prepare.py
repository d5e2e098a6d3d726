"""Parquet in, featurized train/validation datasets out: read + validate (`parquet`), split and resample
(`splits`), featurize (`featurize`)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from .parquet import OUT_OF_SCOPE_ID, LabeledTable, input_column_of, read_labeled_parquet
from .sources import read_training_rows, read_validation_rows
from .splits import resample_per_class, stratified_split

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """What the trainer needs: featurized splits and the label mapping saved with the model."""

    train: Any
    val: Any
    id2label: dict[int, str]
    summary: dict[str, Any] = field(default_factory=dict)
    class_groups: dict[int, set[str]] | None = None

    def train_class_counts(self) -> dict[int, int]:
        """Training rows per class id (the per-class F1 picture marks the classes rare in training)."""
        ids, counts = np.unique(labels_of(self.train), return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i >= 0}


def prepare_datasets(data_cfg: Any, featurizer: Any, seed: int, train_with_oos: bool = False) -> PreparedData:
    """Validate, split, resample and featurize the configured Parquet file.

    Out-of-scope rows (`data.out_of_scope_label`, id -1) all validate by default; with `train_with_oos` they are
    split like a class (`val_ratio` of them validate, the rest train as negatives) and never resampled."""
    read_options = dict(
        out_of_scope_label=getattr(data_cfg, "out_of_scope_label", None),
        skip_bad_rows=getattr(data_cfg, "skip_bad_rows", False),
    )
    labeled = read_labeled_parquet(read_training_rows(data_cfg), **read_options)
    val_rows = read_validation_rows(data_cfg)
    labels = labeled.labels
    val_labeled: LabeledTable | None = None
    if val_rows is not None:  # given as it is: every training row trains, matched to training's labels by name
        label2id = {name: i for i, name in labeled.id2label.items()}
        val_labeled = read_labeled_parquet(val_rows, label2id, known_as="training", **read_options)
        train_idx, val_idx = np.arange(len(labels)), np.arange(0)
    elif getattr(data_cfg, "validate_on_train", False):  # few-shot: no row can be spared for validation
        train_idx = val_idx = np.arange(len(labels))
    else:
        train_idx, val_idx = stratified_split(labels, data_cfg.val_ratio, seed)
    oos_train = labels[train_idx] == OUT_OF_SCOPE_ID
    oos_rows = train_idx[oos_train] if train_with_oos else train_idx[:0]
    if oos_train.any() and not train_with_oos and val_labeled is None:  # they only validate (calibrate rejection)
        val_idx = np.unique(np.concatenate([val_idx, train_idx[oos_train]]))
    elif oos_train.any() and not train_with_oos:
        logger.info("%s: %d out-of-scope rows not used (validation is %s)", labeled.source, oos_train.sum(), val_rows)
    train_idx = train_idx[~oos_train]
    train_idx = resample_per_class(train_idx, labels, data_cfg.upsample, data_cfg.downsample, seed)
    train_idx = np.sort(np.concatenate([train_idx, oos_rows])) if len(oos_rows) else train_idx
    full = labeled.source_dataset()  # every source row, the input column as read (memory-mapped): rows are selected
    if labeled.input_column != featurizer.input_column:
        raise DataError(
            f"{labeled.source}: column '{labeled.input_column}': the backbone's featurizer reads "
            f"'{featurizer.input_column}' inputs"
        )
    if val_labeled is not None and val_labeled.input_column != labeled.input_column:
        raise DataError(
            f"{val_labeled.source}: column '{val_labeled.input_column}': training reads '{labeled.input_column}'"
        )
    featurizer.source, featurizer.locate = labeled.source, labeled.where  # decoding errors name file and row
    train = featurizer.prepare(full.select(labeled.rows[train_idx]), train=True)
    if val_labeled is None:
        val = featurizer.prepare(full.select(labeled.rows[val_idx]), train=False)
    else:
        val_featurizer = copy.copy(featurizer)
        val_featurizer.source, val_featurizer.locate = val_labeled.source, val_labeled.where
        val = val_featurizer.prepare(val_labeled.source_dataset().select(val_labeled.rows), train=False)
    summary = {
        "source": labeled.source,
        **({"val_source": val_labeled.source} if val_labeled is not None else {}),
        "rows_used": len(labels),
        "rows_dropped": labeled.dropped_rows,
        "input_column": labeled.input_column,
        "num_classes": len(labeled.id2label),
        "train_rows": len(train),
        "val_rows": len(val),
        "classifier_rows": int(labeled.columns.column("classifier_mask").to_numpy().sum()),
        "metric_rows": int(labeled.columns.column("metric_mask").to_numpy().sum()),
    }
    if (labels == OUT_OF_SCOPE_ID).any():
        summary["out_of_scope_rows"] = int((labels == OUT_OF_SCOPE_ID).sum())
        if train_with_oos:
            summary["out_of_scope_train_rows"] = len(oos_rows)
    if labeled.input_column != "text":
        summary["rows_skipped_unreadable"] = labeled.bad_rows
    logger.info("data: %s", summary)
    return PreparedData(train, val, labeled.id2label, summary, labeled.class_groups)


def input_column_of_data(data_cfg: Any) -> str:
    """The input column (`text`, `image`, `audio`) of the configured training rows: the first Parquet shard's
    schema alone when it is one (no rows read), else the source's columns (a `datasets` load is cached)."""
    from .sources import expand_paths, rename_columns

    columns = getattr(data_cfg, "columns", None)
    if getattr(data_cfg, "dataset", None) is None:
        first = expand_paths(data_cfg.parquet_path)[0]
        if first.lower().endswith((".parquet", ".pq")):
            import pyarrow as pa

            names = _schema_names(first)
            renamed = rename_columns(pa.schema([(n, pa.null()) for n in names]).empty_table(), columns, first)
            return input_column_of(first, renamed.column_names)
    rows = read_training_rows(data_cfg)
    return input_column_of(rows.source, rows.table.column_names)


def _schema_names(path: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .chunked import read_error

    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError, MemoryError) as err:
        raise read_error(path, err) from None


def labels_of(dataset: Any) -> np.ndarray:
    """The `labels` column of a prepared dataset, read from Arrow without its transform: reading a column of
    an image/audio dataset through `with_transform` would decode every row."""
    return np.asarray(dataset.with_format(None)["labels"])
