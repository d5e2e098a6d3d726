"""ONNX export: parity with PyTorch for every head type, and `--backend onnx` giving the torch backend's output."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_rows, write_parquet
from test_inference_cli import reference_outputs, save_tiny_model

from hf_metric.cli import app
from hf_metric.model.heads import HEADS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_export_matches_the_models_own_forward(tiny_model_dir, tmp_path, head_type, capsys):
    fusion = 0.3 if head_type in ("linear", "arcface") else 0.0
    model_dir = save_tiny_model(tiny_model_dir, tmp_path / "best", head_type, fusion, reference=head_type != "cosine")
    data = write_parquet(tmp_path / "rows.parquet", synthetic_rows(per_class=2, seed=9))
    assert app(["export", "--model", model_dir, "--out", str(tmp_path / "onnx"), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "parity logits" in printed and "parity embeddings" in printed

    import onnxruntime as ort
    from transformers import AutoTokenizer

    texts = ["visa pin please help my the", "courier", "why is my login not working today at all"]
    inputs = AutoTokenizer.from_pretrained(tmp_path / "onnx")(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].astype(np.int64) for i in session.get_inputs()}
    logits, embeddings, head = session.run(["logits", "embeddings", "head_logits"], feed)[:3]
    _, fused, own_head, own_emb = reference_outputs(model_dir, texts)  # one row at a time: no padding
    np.testing.assert_allclose(embeddings, own_emb, atol=1e-4)
    np.testing.assert_allclose(head, own_head, atol=1e-4)
    np.testing.assert_allclose(logits, fused, atol=1e-4)


def test_predict_with_the_onnx_backend_equals_torch(tiny_model_dir, tmp_path):
    model_dir = save_tiny_model(tiny_model_dir, tmp_path / "best")
    assert app(["export", "--model", model_dir, "--out", str(tmp_path / "onnx")]) == 0
    data = write_parquet(tmp_path / "in.parquet", synthetic_rows(per_class=5, seed=2))
    common = ["--data", str(data), "--no-progress"]
    assert app(["predict", "--model", model_dir, *common, "--out", str(tmp_path / "t.parquet")]) == 0
    onnx = ["--model", str(tmp_path / "onnx"), "--backend", "onnx", *common]
    assert app(["predict", *onnx, "--out", str(tmp_path / "o.parquet")]) == 0
    assert app(["embed", *onnx, "--out", str(tmp_path / "o.npy")]) == 0
    a, b = pq.read_table(tmp_path / "t.parquet"), pq.read_table(tmp_path / "o.parquet")
    for column in ("predicted_label", "head_label", "knn_label", "top_labels"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist()
    np.testing.assert_allclose(a.column("score").to_numpy(), b.column("score").to_numpy(), atol=1e-5)
    _, _, _, emb = reference_outputs(model_dir, pq.read_table(data).column("text").to_pylist())
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), emb, atol=1e-4)

    summaries = {}
    for name, model in (
        ("torch", ["--model", model_dir]),
        ("onnx", ["--model", str(tmp_path / "onnx"), "--backend", "onnx"]),
    ):
        assert app(["evaluate", *model, "--data", str(data), "--out", str(tmp_path / name)]) == 0
        summaries[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    for key in ("head_accuracy", "fused_f1", "knn_vote_accuracy", "recall@1", "knn_accuracy", "rare_class_f1"):
        key = key if key in summaries["torch"] else f"head_{key}"
        assert summaries["onnx"][key] == pytest.approx(summaries["torch"][key], abs=1e-6), key
