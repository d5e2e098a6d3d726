"""The inference module (run by the torch backend, traced into ONNX) and the model's forward share one kNN vote:
`softmax_vote` against a naive float64 loop, and the module's dense search giving the model's own fused logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_rows
from test_inference_cli import save_tiny_model

from hf_metric.inference.onnx_module import InferenceModule
from hf_metric.model.knn_fusion import knn_class_probabilities, softmax_vote


def naive_vote(scores: np.ndarray, labels: np.ndarray, num_classes: int, temperature: float) -> np.ndarray:
    out = np.zeros((len(scores), num_classes))
    for i, (row, row_labels) in enumerate(zip(scores.astype(np.float64), labels, strict=True)):
        w = np.exp((row - row.max()) / temperature)
        for label, weight in zip(row_labels, w / w.sum(), strict=True):
            out[i, label] += weight
    return out


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_softmax_vote_matches_a_naive_loop_with_repeated_classes(temperature):
    rng = np.random.default_rng(0)
    scores = np.sort(rng.uniform(-1, 1, size=(12, 6)), axis=1)[:, ::-1].astype(np.float32)
    labels = rng.integers(0, 3, size=(12, 6))  # 6 neighbours over 3 classes: classes repeat within a row
    got = softmax_vote(torch.from_numpy(scores.copy()), torch.from_numpy(labels), 5, temperature).numpy()
    np.testing.assert_allclose(got, naive_vote(scores, labels, 5, temperature), atol=1e-6)
    assert (got[:, 3:] == 0).all()  # classes no neighbour has get nothing
    with pytest.raises(ValueError, match="temperature"):
        softmax_vote(torch.from_numpy(scores.copy()), torch.from_numpy(labels), 5, 0.0)


def test_the_module_gives_the_models_own_fused_prediction(tiny_model_dir, tmp_path):
    """Dense top-k in the module, blocked exact search in the model: the same neighbours, the same vote."""
    from transformers import AutoTokenizer

    from hf_metric.model.modeling import MetricClassifierModel

    path = save_tiny_model(tiny_model_dir, tmp_path / "m", "linear", fusion=0.3)
    model = MetricClassifierModel.from_pretrained(path).eval()
    module = InferenceModule(model)
    assert module.output_names == ["logits", "embeddings", "head_logits", "knn_probabilities"]
    texts = [r["text"] for r in synthetic_rows(per_class=3, seed=5)]
    inputs = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits, emb, head, p_knn = module(inputs["input_ids"], inputs["attention_mask"])
        own = model(**inputs)
    c = model.config
    want = knn_class_probabilities(emb, model.knn_reference_embeddings, model.knn_reference_labels, c.num_labels, 5)
    torch.testing.assert_close(p_knn, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, own.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(head, own.classifier_logits, atol=1e-6, rtol=0)
    assert c.knn_fusion_weight == 0.3 and c.open_set_threshold is None  # the module leaves the config as it was
