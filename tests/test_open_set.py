"""Open-set scores, metrics and calibration against naive float64 / scikit-learn references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hf_metric.model.open_set_scores import (
    OUT_OF_SCOPE_ID,
    energy,
    fit_mahalanobis,
    fuse,
    fusion_statistics,
    knn_max_cosine,
    mahalanobis,
    max_softmax,
)
from hf_metric.open_set.calibration import CRITERIA, calibrate, candidate_thresholds
from hf_metric.open_set.evaluation import (
    OpenSetStatistics,
    all_scores,
    auroc,
    fpr_at_recall,
    operating_point,
    predict_with_rejection,
)


def _data(n=60, classes=4, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 3
    emb = rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, classes, n)
    return logits, emb, labels


def test_msp_and_energy_match_float64():
    logits, _, _ = _data()
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    naive_msp = (shifted / shifted.sum(1, keepdims=True)).max(1)
    np.testing.assert_allclose(max_softmax(logits).numpy(), naive_msp, rtol=1e-5)
    for t in (1.0, 2.5):
        naive = t * np.log(np.exp(logits / t).sum(1))
        np.testing.assert_allclose(energy(logits, t).numpy(), naive, rtol=1e-5)


def test_knn_max_cosine_matches_float64():
    _, emb, _ = _data()
    ref = np.random.default_rng(1).normal(size=(37, emb.shape[1])) * 2.0
    naive = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (ref / np.linalg.norm(ref, axis=1)[:, None]).T
    np.testing.assert_allclose(knn_max_cosine(emb, ref).numpy(), naive.max(1), atol=1e-6)


def test_mahalanobis_matches_float64():
    _, ref, ref_labels = _data(n=200, seed=2)
    query = _data(n=30, seed=3)[1]
    ridge = 1e-3
    means, precision = fit_mahalanobis(ref, ref_labels, 5, ridge)  # class 4 has no rows
    mu = np.stack([ref[ref_labels == c].mean(0) for c in range(4)])
    cov = sum((ref[ref_labels == c] - mu[c]).T @ (ref[ref_labels == c] - mu[c]) for c in range(4)) / len(ref)
    cov += ridge * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    p = np.linalg.inv(cov)
    naive = -np.array([min((x - m) @ p @ (x - m) for m in mu) for x in query])
    np.testing.assert_allclose(means[:4].numpy(), mu, atol=1e-6)
    assert torch.isinf(means[4]).all()
    np.testing.assert_allclose(mahalanobis(query, means, precision).numpy(), naive, rtol=1e-4)


def test_fused_is_mean_of_z_scores():
    rng = np.random.default_rng(4)
    scores = {"a": rng.normal(3, 2, 50), "b": rng.normal(-1, 0.1, 50)}
    in_scope = rng.random(50) > 0.3
    stats = fusion_statistics(scores, in_scope)
    za = (scores["a"] - scores["a"][in_scope].mean()) / scores["a"][in_scope].std(ddof=1)
    zb = (scores["b"] - scores["b"][in_scope].mean()) / scores["b"][in_scope].std(ddof=1)
    np.testing.assert_allclose(fuse(scores, stats).numpy(), (za + zb) / 2, rtol=1e-5)


def test_all_scores_names_and_orientation():
    logits, emb, labels = _data()
    stats = OpenSetStatistics.fit(emb, labels, 4)
    scores = all_scores(logits, emb, stats, labels)
    assert set(scores) == {"msp", "energy", "knn", "mahalanobis", "fused"}
    # a reference row itself is at cosine 1, the maximum
    np.testing.assert_allclose(scores["knn"], 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=300), 1)  # many ties
    in_scope = rng.random(300) > 0.4
    assert auroc(scores, in_scope) == pytest.approx(roc_auc_score(in_scope, scores), abs=1e-12)


def test_fpr_at_recall_matches_naive_search():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=200)
    in_scope = rng.random(200) > 0.3
    best = max(t for t in scores if (scores[in_scope] >= t).mean() >= 0.95)
    assert fpr_at_recall(scores, in_scope) == pytest.approx((scores[~in_scope] >= best).mean())


def test_operating_point_counts_rejected_in_scope_rows_wrong():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0, OUT_OF_SCOPE_ID, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    predicted = predict_with_rejection(logits, scores, 0.5)
    assert predicted.tolist() == [0, 1, OUT_OF_SCOPE_ID, OUT_OF_SCOPE_ID]
    point = operating_point(predicted, labels)
    assert point["in_scope_accuracy"] == pytest.approx(1 / 3)
    assert point["oos_recall"] == 1.0 and point["oos_precision"] == 0.5
    assert point["open_set_accuracy"] == pytest.approx(2 / 4)


def _exhaustive(scores, logits, labels, criterion, target):
    """Naive search: every candidate threshold, metrics by masks, the criterion's rule spelled out."""
    rows = []
    for t in candidate_thresholds(scores):
        point = operating_point(predict_with_rejection(logits, scores, float(t)), labels)
        rows.append((float(t), point))
    oos = labels == OUT_OF_SCOPE_ID
    if criterion == "accuracy":
        best = max(p["open_set_accuracy"] for _, p in rows)
        return min(t for t, p in rows if p["open_set_accuracy"] == best)
    if criterion == "in_scope_recall":
        return max(t for t, p in rows if p["in_scope_recall"] >= target)
    if criterion == "fpr":
        return min(t for t, p in rows if 1 - p["oos_recall"] <= target)
    base = rows[0][1]["in_scope_accuracy"]
    assert not oos.all()
    return max(t for t, p in rows if p["in_scope_accuracy"] >= base - target - 1e-12)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_picks_the_exhaustive_threshold(criterion, seed):
    rng = np.random.default_rng(seed)
    n = 150
    labels = np.where(rng.random(n) < 0.3, OUT_OF_SCOPE_ID, rng.integers(0, 3, n))
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[np.clip(labels, 0, None)] * (labels >= 0)[:, None]
    scores = np.round(rng.normal(size=n) + (labels >= 0), 2)  # in-scope higher, with ties
    target = {"accuracy": None, "in_scope_recall": 0.9, "fpr": 0.1, "accuracy_drop": 0.02}[criterion]
    result = calibrate({"s": scores}, logits, labels, "s", criterion, target)
    assert result.threshold == pytest.approx(_exhaustive(scores, logits, labels, criterion, target), abs=0)
    point = operating_point(predict_with_rejection(logits, scores, result.threshold), labels)
    assert result.metrics["oos_recall"] == pytest.approx(point["oos_recall"])
    assert result.metrics["in_scope_accuracy"] == pytest.approx(point["in_scope_accuracy"])


def test_calibration_auto_prefers_the_separating_score_and_needs_no_oos_for_recall():
    rng = np.random.default_rng(7)
    labels = np.where(np.arange(100) < 30, OUT_OF_SCOPE_ID, rng.integers(0, 2, 100))
    logits = np.eye(2)[np.clip(labels, 0, None)] * 5
    scores = {"noise": rng.normal(size=100), "good": (labels >= 0) + 0.1 * rng.normal(size=100)}
    assert calibrate(scores, logits, labels).score == "good"
    in_scope = labels >= 0
    no_oos = calibrate({"fused": scores["good"][in_scope]}, logits[in_scope], labels[in_scope])
    assert no_oos.criterion == "in_scope_recall" and no_oos.metrics["in_scope_recall"] >= 0.95
    with pytest.raises(ValueError, match="out-of-scope validation rows"):
        calibrate(scores, logits[in_scope], labels[in_scope], criterion="accuracy")
