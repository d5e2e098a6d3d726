import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import synthetic_rows, write_parquet

from hf_metric.data.parquet import read_labeled_parquet
from hf_metric.data.splits import resample_per_class, stratified_split
from hf_metric.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _table(**columns):
    base = {
        "text": ["a b", "c d", "e f", "g h"],
        "label": ["x", "y", "x", "y"],
        "metric_mask": [1, 1, 1, 1],
        "classifier_mask": [1, 1, 1, 1],
    }
    base.update(columns)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"text": None}, r"column 'text' is missing"),
        ({"label": None}, r"column 'label' is missing"),
        ({"text": ["a", None, "b", "c"]}, r"column 'text', row 1: text is null or empty"),
        ({"text": ["a", "b", "   ", "c"]}, r"column 'text', row 2: text is null or empty"),
        ({"label": ["x", "y", None, "y"]}, r"column 'label', row 2: label is null"),
        ({"label": [1, 2, 3, None]}, r"column 'label', row 3: label is null"),
        ({"metric_mask": [1, 0, 2, 1]}, r"column 'metric_mask', row 2: mask must be 0 or 1, got 2"),
        ({"classifier_mask": [1, None, 1, 1]}, r"column 'classifier_mask', row 1: mask must be 0 or 1"),
        ({"classifier_mask": [1.0, 0.5, 1.0, 1.0]}, r"column 'classifier_mask', row 1: mask must be 0 or 1"),
        ({"label": [1.5, 2.0, 1.5, 2.0]}, r"column 'label' must hold integers or strings"),
        ({"metric_mask": [0, 0, 0, 0], "classifier_mask": [0, 0, 0, 0]}, r"no usable row"),
    ],
)
def test_bad_data_names_file_column_and_row(tmp_path, columns, message):
    path = write_parquet(tmp_path / "bad.parquet", _table(**columns))
    with pytest.raises(DataError, match=message) as info:
        read_labeled_parquet(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_empty_file_and_missing_file(tmp_path):
    empty = write_parquet(
        tmp_path / "empty.parquet", {"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}
    )
    with pytest.raises(DataError, match="no rows"):
        read_labeled_parquet(empty)
    with pytest.raises(DataError, match="file not found"):
        read_labeled_parquet(tmp_path / "nope.parquet")
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_labeled_parquet(not_parquet)


def test_row_in_no_loss_may_lack_a_label_and_is_dropped(tmp_path, caplog):
    path = write_parquet(
        tmp_path / "d.parquet",
        _table(label=["x", None, "y", "x"], metric_mask=[1, 0, 1, 0], classifier_mask=[0, 0, 1, 1]),
    )
    with caplog.at_level(logging.INFO):
        table = read_labeled_parquet(path)
    assert table.dropped_rows == 1 and table.table.num_rows == 3
    assert table.table.column("text").to_pylist() == ["a b", "e f", "g h"]
    assert table.table.column("metric_mask").to_pylist() == [1, 1, 0]
    assert table.table.column("classifier_mask").to_pylist() == [0, 1, 1]
    assert "dropped 1 rows" in caplog.text


def test_missing_mask_columns_mean_all_ones_and_are_logged_once(tmp_path, caplog):
    path = write_parquet(tmp_path / "d.parquet", _table(metric_mask=None, classifier_mask=None))
    with caplog.at_level(logging.WARNING):
        table = read_labeled_parquet(path)
    assert table.table.column("metric_mask").to_pylist() == [1, 1, 1, 1]
    assert table.table.column("classifier_mask").to_pylist() == [1, 1, 1, 1]
    assert caplog.text.count("no 'metric_mask' column") == 1
    assert caplog.text.count("no 'classifier_mask' column") == 1


@pytest.mark.parametrize(
    ("labels", "names"), [(["b", "a", "c", "a"], ["a", "b", "c"]), ([10, 2, 7, 2], ["2", "7", "10"])]
)
def test_labels_are_encoded_in_sorted_order(tmp_path, labels, names):
    table = read_labeled_parquet(write_parquet(tmp_path / "d.parquet", _table(label=labels)))
    assert [table.id2label[i] for i in range(len(names))] == names
    decoded = [table.id2label[i] for i in table.labels]
    assert decoded == [str(v) for v in labels]


def test_stratified_split_is_seeded_and_keeps_every_class():
    labels = np.repeat(np.arange(5), [20, 10, 4, 2, 1])
    train, val = stratified_split(labels, 0.25, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    counts = np.bincount(labels[val], minlength=5)
    assert counts.tolist() == [5, 2, 1, 1, 0]  # round(n * 0.25), at least 1 when a class has 2+ rows
    again = stratified_split(labels, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, stratified_split(labels, 0.25, seed=4)[1])


def test_resample_to_target_counts():
    labels = np.repeat(np.arange(3), [2, 5, 20])
    idx = np.arange(len(labels))
    out = resample_per_class(idx, labels, upsample=4, downsample=10, seed=0)
    assert np.bincount(labels[out]).tolist() == [4, 5, 10]
    assert set(out[labels[out] == 0]) == {0, 1}  # upsampling repeats the class's own rows


def test_cli_bad_data_exits_2_without_traceback(tmp_path, make_config):
    path = write_parquet(tmp_path / "bad.parquet", _table(label=["x", "y", None, "y"]))
    config = make_config(path)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_metric_classifier.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {path}: column 'label', row 2: label is null but the row is in a loss (a mask is 1)"]
    assert "Traceback" not in proc.stderr


def test_synthetic_rows_are_usable(tmp_path):
    table = read_labeled_parquet(write_parquet(tmp_path / "s.parquet", synthetic_rows(5)))
    assert table.table.num_rows == 20 and len(table.id2label) == 4


def test_group_margins_are_larger_for_classes_sharing_a_group(tmp_path):
    from hf_metric.data.groups import group_class_margins

    path = write_parquet(
        tmp_path / "g.parquet",
        _table(label=["a", "b", "c", "c"], group=["loc1", "loc1", "loc2", None], text=["x", "y", "z", "w"]),
    )
    table = read_labeled_parquet(path)
    assert table.class_groups == {0: {"loc1"}, 1: {"loc1"}, 2: {"loc2"}}
    assert group_class_margins(table.class_groups, same=0.7, default=0.5) == [0.7, 0.7, 0.5]


@pytest.mark.parametrize("oos", [False, True])
def test_validate_on_train_holds_out_no_row_and_validates_on_the_training_rows(tmp_path, oos):
    """Few-shot: every labelled row trains, and the validation set is exactly those rows (plus out-of-scope)."""
    import types

    from hf_metric.config import DataSection
    from hf_metric.data.prepare import prepare_datasets

    rows = synthetic_rows(3, seed=1)
    if oos:
        rows.append({"text": "weather today", "label": "oos", "metric_mask": 1, "classifier_mask": 1})
    path = write_parquet(tmp_path / "k.parquet", rows)
    featurizer = types.SimpleNamespace(input_column="text", prepare=lambda ds, train: ds)
    section = DataSection(parquet_path=str(path), validate_on_train=True, out_of_scope_label="oos" if oos else None)
    data = prepare_datasets(section, featurizer, seed=0)
    in_scope = sorted(r["text"] for r in rows if r["label"] != "oos")
    assert sorted(data.train["text"]) == in_scope
    assert sorted(data.val["text"]) == sorted(r["text"] for r in rows)  # out-of-scope rows only validate, once
    split = prepare_datasets(DataSection(parquet_path=str(path), val_ratio=0.34), featurizer, seed=0)
    assert len(split.train) < len(in_scope)  # without the flag a share of every class is held out
