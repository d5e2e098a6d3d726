"""Classifier + kNN fusion: the probabilities against a naive float64 loop, and the model option end to end."""

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_parquet

from hf_metric.loading import load_config
from hf_metric.model.knn_fusion import fuse_probabilities, knn_class_probabilities
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.run import train


def naive_knn_probabilities(query, ref, ref_labels, num_classes, k, temperature):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    out = np.zeros((len(q), num_classes))
    for i, row in enumerate(q.astype(np.float64) @ r.astype(np.float64).T):
        nearest = np.argsort(-row, kind="stable")[:k]
        w = np.exp((row[nearest] - row[nearest].max()) / temperature)
        for j, weight in zip(nearest, w / w.sum(), strict=True):
            out[i, ref_labels[j]] += weight
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_knn_probabilities_match_naive(seed, temperature):
    rng = np.random.default_rng(seed)
    query, ref = rng.normal(size=(40, 16)).astype(np.float32), rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 7, size=300)
    got = knn_class_probabilities(query, ref, labels, 7, k=5, temperature=temperature).numpy()
    np.testing.assert_allclose(got, naive_knn_probabilities(query, ref, labels, 7, 5, temperature), atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_fusion_is_a_convex_mix():
    logits = torch.randn(5, 4)
    knn = torch.softmax(torch.randn(5, 4), dim=1)
    np.testing.assert_allclose(fuse_probabilities(logits, knn, 0.0), torch.softmax(logits, 1), atol=1e-6)
    np.testing.assert_allclose(fuse_probabilities(logits, knn, 1.0), knn, atol=1e-6)
    mixed = 0.3 * knn + 0.7 * torch.softmax(logits, 1)
    np.testing.assert_allclose(fuse_probabilities(logits, knn, 0.3), mixed, atol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        fuse_probabilities(logits, knn, 1.5)


def test_training_stores_reference_and_fused_logits_survive_reload(tmp_path, make_config):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(12))
    cfg = load_config(make_config(data, model={"classifier_dropout": 0.0, "knn_fusion_weight": 0.5}))
    metrics = train(cfg)
    assert {"eval_fused_accuracy", "eval_fused_f1", "eval_accuracy"} <= set(metrics)
    model = MetricClassifierModel.from_pretrained(tmp_path / "ckpt" / "best").eval()
    n_train = metrics["eval_fused_accuracy"] is not None and model.config.knn_reference_size
    assert n_train > 0 and model.knn_reference_embeddings.abs().sum() > 0
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 8, 3]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    p_knn = knn_class_probabilities(
        out.embeddings, model.knn_reference_embeddings, model.knn_reference_labels, model.config.num_labels, 10, 0.05
    )
    expected = (0.5 * torch.softmax(out.classifier_logits, 1) + 0.5 * p_knn).log()
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
