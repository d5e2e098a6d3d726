"""`hf-metric evaluate` on a test file with out-of-scope rows: they leave the class metrics and give the open-set
metrics, checked against scikit-learn and naive loops on the model's own forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_rows, write_parquet
from sklearn.metrics import accuracy_score, roc_auc_score
from test_inference_cli import NAMES, reference_outputs, save_tiny_model
from test_open_set_training import _oos_rows

from hf_metric.cli import app
from hf_metric.model.modeling import MetricClassifierModel


def _softmax_max(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    rows = synthetic_rows(per_class=5, seed=21) + _oos_rows(8, seed=4)
    return rows, write_parquet(tmp_path_factory.mktemp("data") / "test.parquet", rows)


def _evaluate(model_dir, data, out, *extra) -> dict:
    assert app(["evaluate", "--model", model_dir, "--data", str(data), "--out", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["metrics"]


def test_evaluate_counts_oos_rows_with_the_models_rule(tiny_model_dir, tmp_path, test_file):
    rows, data = test_file
    folder = save_tiny_model(tiny_model_dir, tmp_path / "best")  # kNN fusion 0.3: msp judges the fused prediction
    texts = [r["text"] for r in rows]
    _, fused, head, _ = reference_outputs(folder, texts)
    msp = _softmax_max(fused)
    threshold = float(np.sort(msp)[len(msp) // 2 - 1 : len(msp) // 2 + 1].mean())  # between two rows
    model = MetricClassifierModel.from_pretrained(folder)
    model.set_open_set("msp", threshold)
    model.save_pretrained(folder)

    metrics = _evaluate(folder, data, tmp_path / "eval")
    oos = np.array([r["label"] == "oos" for r in rows])
    y = np.array([NAMES.index(r["label"]) if r["label"] in NAMES else -1 for r in rows])
    assert metrics["out_of_scope_rows"] == 8 and metrics["classifier_rows"] == len(rows) - 8
    assert metrics["head_accuracy"] == pytest.approx(accuracy_score(y[~oos], head[~oos].argmax(1)))
    assert metrics["fused_accuracy"] == pytest.approx(accuracy_score(y[~oos], fused[~oos].argmax(1)))
    assert metrics["oos_auroc_msp"] == pytest.approx(roc_auc_score(~oos, msp), abs=1e-6)
    energy = np.log(np.exp(head).sum(axis=1))
    assert metrics["oos_auroc_energy"] == pytest.approx(roc_auc_score(~oos, energy), abs=1e-6)
    for name in ("knn", "mahalanobis", "fused"):
        assert 0.0 <= metrics[f"oos_auroc_{name}"] <= 1.0 and 0.0 <= metrics[f"oos_fpr95_{name}"] <= 1.0
    # the operating point, naively: rejected rows are wrong in-scope, right out of scope
    rejected = msp < threshold
    assert 0 < rejected.sum() < len(rows)
    correct = ~rejected & (fused.argmax(1) == y)
    assert metrics["in_scope_accuracy"] == pytest.approx(correct[~oos].mean())
    assert metrics["in_scope_recall"] == pytest.approx((~rejected[~oos]).mean())
    assert metrics["oos_recall"] == pytest.approx(rejected[oos].mean())
    assert metrics["oos_precision"] == pytest.approx(oos[rejected].mean())
    report = (tmp_path / "eval" / "report.md").read_text()
    assert (
        "open_set_curve" in report
        and "oos" not in json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_class"]
    )


def test_evaluate_without_a_rule_still_reports_threshold_free_metrics(model_dir, tmp_path, test_file):
    rows, data = test_file
    metrics = _evaluate(model_dir, data, tmp_path / "eval")
    assert "in_scope_accuracy" not in metrics  # no threshold: no operating point
    oos = np.array([r["label"] == "oos" for r in rows])
    _, fused, head, _ = reference_outputs(model_dir, [r["text"] for r in rows])
    assert metrics["oos_auroc_msp"] == pytest.approx(roc_auc_score(~oos, _softmax_max(fused)), abs=1e-6)
    y = np.array([NAMES.index(r["label"]) for r in rows if r["label"] != "oos"])
    assert metrics["head_accuracy"] == pytest.approx(accuracy_score(y, head[~oos].argmax(1)))


def test_other_unknown_labels_are_still_an_error(model_dir, tmp_path, test_file, capsys):
    rows, _ = test_file
    bad = write_parquet(
        tmp_path / "bad.parquet",
        [*rows, {"text": "visa pin", "label": "cards", "metric_mask": 1, "classifier_mask": 1}],
    )
    assert app(["evaluate", "--model", model_dir, "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown to the model: 'cards'" in err and "oos" not in err
    # another out-of-scope label: now "oos" is unknown, "cards" is out of scope
    assert app(["evaluate", "--model", model_dir, "--data", str(bad), "--out-of-scope-label", "cards"]) == 2
    assert "unknown to the model: 'oos'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    return save_tiny_model(tiny_model_dir, tmp_path_factory.mktemp("model") / "best")
