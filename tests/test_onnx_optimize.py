"""The export made fast: the fused float32 graph still matches the model's own forward to 1e-4, and the int8
graph is checked against a stated tolerance with its accuracy change (and the open-set threshold) reported
as the predictions of both backends give them."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_rows, write_parquet
from test_inference_cli import reference_outputs, save_tiny_model

from hf_metric.cli import app

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

QUERIES = ["visa pin please help my the", "courier", "why is my login not working today at all", "refund"]


def _ops(folder) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


def _session_outputs(folder, texts: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime alone, as an ONNX user runs the folder (one padded batch)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    inputs = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].astype(np.int64) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def test_the_fused_graph_matches_the_models_own_forward(tiny_model_dir, tmp_path, capsys):
    model = save_tiny_model(tiny_model_dir, tmp_path / "best")
    assert app(["export", "--model", model, "--out", str(tmp_path / "fused")]) == 0
    assert "fused for CPU: Attention x2" in capsys.readouterr().out
    info = json.loads((tmp_path / "fused" / "hf_metric_export.json").read_text())
    assert info["optimization"]["fused"] and info["optimization"]["operators"]["Attention"] == 2  # 2 layers
    ops = _ops(tmp_path / "fused")
    assert ops["Attention"] == 2 and ops["SkipLayerNormalization"] == 4 and ops["EmbedLayerNormalization"] == 1
    out = _session_outputs(tmp_path / "fused", QUERIES)
    _, fused, head, emb = reference_outputs(model, QUERIES)  # one row at a time, the model's blocked kNN search
    np.testing.assert_allclose(out["embeddings"], emb, atol=1e-4)
    np.testing.assert_allclose(out["head_logits"], head, atol=1e-4)
    np.testing.assert_allclose(out["logits"], fused, atol=1e-4)

    assert app(["export", "--model", model, "--out", str(tmp_path / "plain"), "--no-optimize"]) == 0
    assert _ops(tmp_path / "plain")["Attention"] == 0
    assert not json.loads((tmp_path / "plain" / "hf_metric_export.json").read_text())["optimization"]["fused"]


def _accuracy(table: dict, labels: list[str]) -> float:
    return float(np.mean([p == y for p, y in zip(table["predicted_label"], labels, strict=True)]))


def test_int8_export_reports_the_accuracy_change_that_predict_gives(tiny_model_dir, tmp_path, capsys):
    model = save_tiny_model(tiny_model_dir, tmp_path / "best")
    rows = synthetic_rows(per_class=8, seed=21)
    data = write_parquet(tmp_path / "test.parquet", rows)
    args = ["export", "--model", model, "--out", str(tmp_path / "int8"), "--data", str(data), "--quantize", "int8"]
    assert app([*args, "--max-accuracy-drop", "100"]) == 0  # a random tiny model: one flipped row is 3 points
    printed = capsys.readouterr().out
    assert "int8 accuracy on 32 labelled rows" in printed and "embedding cosine mean" in printed
    report = json.loads((tmp_path / "int8" / "hf_metric_export.json").read_text())["int8"]
    assert report["min_cosine"] >= report["tolerance"]["min_cosine"] == 0.95
    assert report["mean_cosine"] >= report["tolerance"]["mean_cosine"] == 0.99
    ops = _ops(tmp_path / "int8")
    assert ops["QAttention"] == 2 and ops["MatMulInteger"] >= 6  # the backbone is int8
    assert ops["MatMul"] == 2 and report["float32_matmuls_kept"] == 2  # the kNN product and the head stay float32

    # the report's numbers are what `predict` gives with the torch model and with the int8 folder
    common = ["--data", str(data), "--no-progress"]
    assert app(["predict", "--model", model, *common, "--out", str(tmp_path / "t.parquet")]) == 0
    onnx_args = ["--model", str(tmp_path / "int8"), "--backend", "onnx", *common]
    assert app(["predict", *onnx_args, "--out", str(tmp_path / "q.parquet")]) == 0
    labels = [r["label"] for r in rows]
    torch_table, int8_table = (pq.read_table(tmp_path / f).to_pydict() for f in ("t.parquet", "q.parquet"))
    assert report["accuracy_fp32"] == pytest.approx(_accuracy(torch_table, labels))
    assert report["accuracy_int8"] == pytest.approx(_accuracy(int8_table, labels))
    agree = np.mean(
        [a == b for a, b in zip(torch_table["predicted_label"], int8_table["predicted_label"], strict=True)]
    )
    assert report["top1_agreement"] == pytest.approx(agree)


def test_an_int8_export_outside_the_accuracy_tolerance_is_not_kept(tiny_model_dir, tmp_path, capsys):
    model = save_tiny_model(tiny_model_dir, tmp_path / "best")
    data = write_parquet(tmp_path / "test.parquet", synthetic_rows(per_class=4, seed=3))
    out = tmp_path / "int8"
    args = ["export", "--model", model, "--out", str(out), "--data", str(data), "--quantize", "int8"]
    assert app([*args, "--max-accuracy-drop", "-101"]) == 2  # asks for a gain no model can show
    assert "--max-accuracy-drop" in capsys.readouterr().err and not out.exists()


def test_the_calibrated_threshold_is_rechecked_on_the_int8_model(tiny_model_dir, tmp_path, capsys):
    from test_onnx_open_set import _ruled_model
    from test_open_set_training import _oos_rows

    rows = synthetic_rows(per_class=5, seed=12) + _oos_rows(8, seed=5)
    texts = [r["text"] for r in rows]
    path, threshold = _ruled_model(tiny_model_dir, tmp_path / "best", "knn", texts)
    data = write_parquet(tmp_path / "test.parquet", rows)
    args = ["export", "--model", path, "--out", str(tmp_path / "int8"), "--data", str(data), "--quantize", "int8"]
    assert app([*args, "--max-accuracy-drop", "100"]) == 0
    assert "open-set threshold" in capsys.readouterr().out
    rule = json.loads((tmp_path / "int8" / "hf_metric_export.json").read_text())["int8"]["open_set"]
    assert rule["threshold"] == threshold

    common = ["--data", str(data), "--no-progress"]
    assert app(["predict", "--model", path, *common, "--out", str(tmp_path / "t.parquet")]) == 0
    onnx_args = ["--model", str(tmp_path / "int8"), "--backend", "onnx", *common]
    assert app(["predict", *onnx_args, "--out", str(tmp_path / "q.parquet")]) == 0
    a, b = (np.asarray(pq.read_table(tmp_path / f).column("is_out_of_scope")) for f in ("t.parquet", "q.parquet"))
    oos = np.asarray([r["label"] == "oos" for r in rows])
    assert rule["rejected_fp32"] == pytest.approx(a.mean()) and rule["rejected_int8"] == pytest.approx(b.mean())
    assert rule["decisions_flipped"] == pytest.approx((a != b).mean())
    assert rule["oos_recall_fp32"] == pytest.approx(a[oos].mean())
    assert rule["oos_recall_int8"] == pytest.approx(b[oos].mean())
