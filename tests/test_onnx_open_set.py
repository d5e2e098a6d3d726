"""ONNX export of the open-set rule: onnxruntime rejects exactly the rows the PyTorch model rejects, for every
score, and the export states the rule (score, threshold, label)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import synthetic_rows, write_parquet
from test_inference_cli import NAMES, save_tiny_model

from hf_metric.cli import app
from hf_metric.inference.backends import TorchBackend, run_batches
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.model.open_set_scores import SCORE_NAMES, base_scores, fit_mahalanobis, fusion_statistics
from hf_metric.open_set.onnx_graph import EXPORTABLE_SCORES

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _ruled_model(tiny_model_dir, folder, score: str, texts: list[str]) -> tuple[str, float]:
    """A tiny model with a kNN reference and a rule on `score` whose threshold lies halfway between two of the
    texts' scores near their median (so no row sits on the threshold)."""
    path = save_tiny_model(tiny_model_dir, folder)
    model = MetricClassifierModel.from_pretrained(path)
    ref, labels = model.knn_reference_embeddings, model.knn_reference_labels
    means, precision = fit_mahalanobis(ref, labels, len(NAMES))
    stats = None
    if score == "fused":  # every component, z-normalised on the texts' own scores
        backend = TorchBackend(path)
        out = run_batches(backend, _featurizer(path), texts, 8)
        parts = base_scores(out.head_logits, out.embeddings, ref, means, precision)
        parts["msp"] = torch.softmax(torch.from_numpy(out.logits), dim=-1).amax(dim=-1)
        stats = fusion_statistics(parts)
    model.set_open_set(score, 0.0, stats, means, precision)
    model.save_pretrained(path)
    backend = TorchBackend(path)
    values = np.sort(backend.open_set_scores(run_batches(backend, _featurizer(path), texts, 8)))
    middle = len(values) // 2
    threshold = float((values[middle - 1] + values[middle]) / 2)
    model.set_open_set(score, threshold, stats, means, precision)
    model.save_pretrained(path)
    return path, threshold


def _featurizer(path: str):
    from hf_metric.data.featurize import featurizer_for

    return featurizer_for(path, "text")


def test_every_score_is_exportable():
    assert set(EXPORTABLE_SCORES) == set(SCORE_NAMES)


@pytest.mark.parametrize("score", SCORE_NAMES)
def test_onnx_rejects_what_torch_rejects(tiny_model_dir, tmp_path, score):
    texts = [r["text"] for r in synthetic_rows(per_class=6, seed=11)]
    path, threshold = _ruled_model(tiny_model_dir, tmp_path / "best", score, texts)
    assert app(["export", "--model", path, "--out", str(tmp_path / "onnx")]) == 0
    info = json.loads((tmp_path / "onnx" / "hf_metric_export.json").read_text())
    assert info["outputs"][-1] == "open_set_scores"
    assert info["open_set"]["score"] == score and info["open_set"]["threshold"] == threshold
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["open_set_threshold"] == threshold

    # the torch model's own forward decides with its stored rule
    model = MetricClassifierModel.from_pretrained(path).eval()
    tokenizer = _featurizer(path).processor
    with torch.no_grad():
        own = torch.cat([model(**tokenizer([t], return_tensors="pt")).open_set_scores for t in texts]).numpy()

    # onnxruntime alone, as an ONNX user would run it: the graph's output against the exported threshold
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = tokenizer(texts, padding=True, return_tensors="np")
    feed = {i.name: inputs[i.name].astype(np.int64) for i in session.get_inputs()}
    (graph,) = session.run(["open_set_scores"], feed)
    rejected = own < np.float32(threshold)
    assert 0 < rejected.sum() < len(texts)
    assert ((graph < np.float32(info["open_set"]["threshold"])) == rejected).all()
    np.testing.assert_allclose(graph, own, rtol=1e-4, atol=1e-4)

    # and `predict --backend onnx` writes the same rejections as the torch backend
    data = write_parquet(tmp_path / "in.parquet", {"text": texts})
    common = ["--data", str(data), "--no-progress"]
    assert app(["predict", "--model", path, *common, "--out", str(tmp_path / "t.parquet")]) == 0
    onnx = ["--model", str(tmp_path / "onnx"), "--backend", "onnx", *common]
    assert app(["predict", *onnx, "--out", str(tmp_path / "o.parquet")]) == 0
    a, b = pq.read_table(tmp_path / "t.parquet"), pq.read_table(tmp_path / "o.parquet")
    assert a.column("is_out_of_scope").to_pylist() == rejected.tolist() == b.column("is_out_of_scope").to_pylist()
    assert a.column("predicted_label").to_pylist() == b.column("predicted_label").to_pylist()


def test_evaluate_with_the_onnx_backend_gives_the_torch_open_set_metrics(tiny_model_dir, tmp_path):
    from test_open_set_training import _oos_rows

    rows = synthetic_rows(per_class=5, seed=12) + _oos_rows(8, seed=5)
    texts = [r["text"] for r in rows]
    path, _ = _ruled_model(tiny_model_dir, tmp_path / "best", "mahalanobis", texts)
    assert app(["export", "--model", path, "--out", str(tmp_path / "onnx")]) == 0
    data = write_parquet(tmp_path / "test.parquet", rows)
    got = {}
    for name, model in (("torch", [path]), ("onnx", [str(tmp_path / "onnx"), "--backend", "onnx"])):
        out = tmp_path / f"eval_{name}"
        assert app(["evaluate", "--model", *model, "--data", str(data), "--out", str(out), "--no-progress"]) == 0
        got[name] = json.loads((out / "metrics.json").read_text())["metrics"]
    keys = [k for k in got["torch"] if k.startswith("oos_") or k.startswith("in_scope_")]
    assert {"in_scope_accuracy", "oos_recall", "oos_auroc_mahalanobis", "oos_fpr95_knn"} <= set(keys)
    for key in keys:
        assert got["onnx"][key] == pytest.approx(got["torch"][key], abs=1e-6), key
