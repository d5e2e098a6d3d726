"""Out-of-scope rows in the training file: never a class, only validation; the run calibrates and saves the rule."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import FILLER, synthetic_rows, write_parquet

from hf_metric.data.parquet import OUT_OF_SCOPE_ID, read_labeled_parquet
from hf_metric.errors import ConfigError, DataError
from hf_metric.loading import load_config
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.run import train


def _oos_rows(n: int, seed: int = 9) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"text": " ".join(rng.sample(FILLER, 5)), "label": "oos", "metric_mask": 1, "classifier_mask": 1}
        for _ in range(n)
    ]


def test_out_of_scope_rows_get_no_class(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", synthetic_rows(5) + _oos_rows(6))
    plain = read_labeled_parquet(path)
    assert "oos" in plain.id2label.values()  # without the setting it is just a label
    table = read_labeled_parquet(path, out_of_scope_label="oos")
    assert sorted(table.id2label.values()) == ["account", "billing", "card", "delivery"]
    assert (table.labels == OUT_OF_SCOPE_ID).sum() == 6 and table.labels.max() == 3
    with pytest.raises(DataError, match="every row has the out-of-scope label"):
        read_labeled_parquet(write_parquet(tmp_path / "o.parquet", _oos_rows(3)), out_of_scope_label="oos")


def test_open_set_config_is_checked(tmp_path, make_config):
    path = write_parquet(tmp_path / "d.parquet", synthetic_rows(5))
    with pytest.raises(ConfigError, match=r"open_set\.target"):
        load_config(make_config(path, open_set={"enabled": True, "criterion": "accuracy", "target": 0.9}))
    assert load_config(make_config(path, open_set={"enabled": True, "target": 0.9})).open_set.target == 0.9
    with pytest.raises(ConfigError, match=r"open_set\.score"):
        load_config(make_config(path, open_set={"score": "entropy"}))


def test_training_calibrates_and_saves_the_rejection(tmp_path, make_config):
    rows = synthetic_rows(30, seed=2) + _oos_rows(40)
    config = make_config(
        write_parquet(tmp_path / "d.parquet", rows),
        data={"out_of_scope_label": "oos"},
        optimizer={"learning_rate": 1e-2},
        open_set={"enabled": True},
    )
    metrics = train(load_config(config))
    for name in ("msp", "energy", "knn", "mahalanobis", "fused"):
        assert 0.0 <= metrics[f"eval_oos_auroc_{name}"] <= 1.0
    assert 0.0 <= metrics["eval_open_set_oos_recall"] <= 1.0
    best = tmp_path / "ckpt" / "best"
    saved = json.loads((best / "config.json").read_text())
    assert saved["open_set_score"] in ("msp", "energy", "knn", "mahalanobis", "fused")
    assert saved["open_set_threshold"] == metrics["eval_open_set_threshold"]
    assert "oos" not in saved["id2label"].values()
    # validation: 8 in-scope rows per class (val_ratio 0.25 of 30) and every one of the 40 out-of-scope rows: too
    # few out-of-scope rows to choose by (criterion auto), so the rule keeps 95 % of the in-scope rows, and says so
    chosen = saved["open_set_calibration"]
    assert (chosen["in_scope_rows"], chosen["oos_rows"], chosen["criterion"]) == (4 * 8, 40, "in_scope_recall")
    assert metrics["eval_open_set_validation_oos_rows"] == 40 and metrics["eval_open_set_in_scope_recall"] >= 0.95
    report = (tmp_path / "ckpt" / "report.md").read_text()
    assert "## Open-set rule" in report and "only 40 out-of-scope rows (< 100)" in report
    loaded = MetricClassifierModel.from_pretrained(best)
    assert loaded.config.open_set_threshold == saved["open_set_threshold"]
    assert np.isfinite(loaded.config.open_set_threshold)
