"""The evaluator returns every metric it names (the list `save_best_by` is checked against), with numbers that
match independent references."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

from hf_metric.evaluation.evaluator import EvalPredictions, MetricEvaluator, PlotSettings, RetrievalSettings
from hf_metric.evaluation.names import metric_names
from hf_metric.model.losses import CrossEntropyLoss, TripletMarginLoss
from hf_metric.model.objective import TrainingObjective


def _predictions(n=120, classes=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    centers = rng.normal(size=(classes, dim))
    emb = centers[labels] + 0.8 * rng.normal(size=(n, dim))
    logits = emb @ centers.T + rng.normal(size=(n, classes))
    return EvalPredictions(
        logits.astype(np.float32), emb.astype(np.float32), labels, rng.random(n) > 0.2, rng.random(n) > 0.1
    )


def _evaluator(plots=None):
    objective = TrainingObjective(CrossEntropyLoss(), TripletMarginLoss(), 1.0, 0.5, "triplet")
    return MetricEvaluator(objective, RetrievalSettings((1, 3), "cos", 5), plots)


def test_the_evaluator_returns_every_name_it_declares():
    p = _predictions()
    reference = (torch.as_tensor(p.embeddings), p.labels)
    evaluator = _evaluator()
    metrics = evaluator(p, reference).metrics
    declared = evaluator.metric_names()
    assert declared == metric_names("triplet_loss", (1, 3))
    assert set(declared) <= set(metrics), set(declared) - set(metrics)


def test_classification_numbers_match_scikit_learn():
    p = _predictions(seed=1)
    m = _evaluator()(p).metrics
    ce = p.classifier_rows
    pred = p.logits[ce].argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(p.labels[ce], pred))
    assert m["f1"] == pytest.approx(f1_score(p.labels[ce], pred, average="macro"))
    top5 = top_k_accuracy_score(p.labels[ce], p.logits[ce], k=5, labels=np.arange(6))
    assert m["top5_accuracy"] == pytest.approx(top5)
    assert "recall@1" not in m  # no reference: no retrieval metrics


def test_losses_equal_the_objective_on_the_whole_set():
    p = _predictions(seed=2)
    got = _evaluator()(p).metrics
    t = torch.as_tensor
    ce = torch.nn.functional.cross_entropy(t(p.logits[p.classifier_rows]).double(), t(p.labels[p.classifier_rows]))
    assert got["ce_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert got["loss"] == pytest.approx(got["ce_loss"] + 0.5 * got["triplet_loss"], rel=1e-9)


def test_pictures_are_drawn_only_with_a_tag(tmp_path):
    p = _predictions(seed=3)
    evaluator = _evaluator(PlotSettings(str(tmp_path)))
    assert evaluator(p).plots == {}
    plots = evaluator(p, plot_tag="step7").plots
    assert plots and all(path.endswith("_step7.png") for path in plots.values())
