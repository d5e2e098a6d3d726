"""`hf-metric evaluate`'s operating-point table, checked against a naive quantile computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import synthetic_rows, write_parquet
from test_evaluate_open_set import _softmax_max
from test_inference_cli import NAMES, reference_outputs, save_tiny_model
from test_open_set_training import _oos_rows

from hf_metric.cli import app
from hf_metric.model.modeling import MetricClassifierModel


def test_operating_points_of_the_rule_and_of_each_recall(tiny_model_dir, tmp_path):
    rows = synthetic_rows(per_class=8, seed=41) + _oos_rows(10, seed=6)
    data = write_parquet(tmp_path / "test.parquet", rows)
    folder = save_tiny_model(tiny_model_dir, tmp_path / "best")
    _, fused, _, _ = reference_outputs(folder, [r["text"] for r in rows])
    msp = _softmax_max(fused).astype(np.float32)
    model = MetricClassifierModel.from_pretrained(folder)
    model.set_open_set("msp", float(np.median(msp)))
    model.save_pretrained(folder)
    out = tmp_path / "eval"
    assert app(["evaluate", "--model", folder, "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    points, metrics = summary["open_set_operating_points"], summary["metrics"]
    assert points[0]["rule"] == "model" and points[0]["score"] == "msp"
    for key in ("in_scope_recall", "in_scope_accuracy", "oos_recall"):
        assert points[0][key] == pytest.approx(metrics[key])
    assert {p["score"] for p in points} >= {"msp", "energy", "knn", "fused"}
    oos = np.array([r["label"] == "oos" for r in rows])
    y = np.array([NAMES.index(r["label"]) if r["label"] in NAMES else -1 for r in rows])
    inside = np.sort(msp[~oos])[::-1]
    for recall in (0.9, 0.95, 0.99):
        row = next(p for p in points if p["score"] == "msp" and p["rule"] == f"in-scope recall >= {recall:g}")
        t = inside[math.ceil(recall * len(inside)) - 1]  # the highest threshold keeping that share of in-scope rows
        assert row["threshold"] == pytest.approx(float(t), rel=1e-6)
        kept = msp >= t
        assert row["in_scope_recall"] == pytest.approx(kept[~oos].mean())
        assert row["in_scope_accuracy"] == pytest.approx((kept & (fused.argmax(1) == y))[~oos].mean())
        assert row["oos_recall"] == pytest.approx((~kept[oos]).mean())
    report = (out / "report.md").read_text()
    assert "## Open set: operating points" in report and "| msp | model |" in report
