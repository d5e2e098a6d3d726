"""Open-set rejection in the model and the pipelines: unchanged without a threshold, the calibrated rule
survives save/load (also as remote code), and the stored score is the evaluation's score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_rows
from transformers import AutoModel, AutoTokenizer, pipeline

import hf_metric  # noqa: F401 - registers the model classes and the pipelines
from hf_metric.evaluation.evaluator import EvalPredictions, MetricEvaluator
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.model.open_set_scores import OUT_OF_SCOPE_ID, fit_mahalanobis
from hf_metric.open_set.evaluation import OpenSetSettings, OpenSetStatistics, all_scores

ID2LABEL = {0: "account", 1: "billing", 2: "card", 3: "delivery"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
QUERIES = [r["text"] for r in synthetic_rows(2, seed=5)]
REFERENCE = synthetic_rows(4, seed=6)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_model_dir):
    path = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, projection_dim=8, classifier_dropout=0.0)
    model.eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return str(path), model, AutoTokenizer.from_pretrained(path)


def _outputs(model, tokenizer, texts):
    with torch.no_grad():
        outs = [model(**tokenizer([t], return_tensors="pt")) for t in texts]
    return outs


def _with_rule(plain, tmp_path, score: str, quantile: float):
    """A copy of the plain model with a kNN reference, a Mahalanobis fit and a threshold on `score` at the
    `quantile` of the query scores; saved to tmp_path. Returns (path, model, expected query scores)."""
    path, _, tokenizer = plain
    ruled = MetricClassifierModel.from_pretrained(path).eval()
    ref_out = _outputs(ruled, tokenizer, [r["text"] for r in REFERENCE])
    ref_emb = torch.cat([o.embeddings for o in ref_out])
    ref_labels = torch.tensor([LABEL2ID[r["label"]] for r in REFERENCE])
    ruled.set_knn_reference(ref_emb, ref_labels)
    means, precision = fit_mahalanobis(ref_emb, ref_labels, len(ID2LABEL))
    q_out = _outputs(ruled, tokenizer, QUERIES)
    logits, emb = torch.cat([o.logits for o in q_out]).numpy(), torch.cat([o.embeddings for o in q_out]).numpy()
    stats = OpenSetStatistics(ref_emb.numpy(), means.numpy(), precision.numpy())
    expected = all_scores(logits, emb, stats)
    threshold = float(np.quantile(expected[score], quantile))
    ruled.set_open_set(score, threshold, stats.fusion_stats, means, precision)
    ruled.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path), ruled, expected[score], threshold


def test_a_model_without_threshold_answers_as_before(plain):
    path, model, tokenizer = plain
    assert model.config.open_set_threshold is None and model.config.open_set_score is None
    out = _outputs(model, tokenizer, QUERIES[:1])[0]
    assert out.open_set_scores is None and "open_set_scores" not in out
    assert len(out.to_tuple()) == 2  # logits, embeddings: what the evaluation loop and exports see
    stock = pipeline("text-classification", model=path)(QUERIES)
    assert pipeline("open-set-classification", model=path)(QUERIES) == stock
    assert set(stock[0]) == {"label", "score"}
    knn = pipeline("knn-classification", model=path)
    knn.fit([r["text"] for r in REFERENCE], [r["label"] for r in REFERENCE])
    assert all(set(a) == {"label", "score"} for a in knn(QUERIES))


@pytest.mark.parametrize("score", ["msp", "energy", "knn", "mahalanobis", "fused"])
def test_threshold_survives_save_and_load_and_scores_match_evaluation(plain, tmp_path, score):
    path, _, expected, threshold = _with_rule(plain, tmp_path, score, 0.5)
    for loaded in (
        MetricClassifierModel.from_pretrained(path).eval(),
        AutoModel.from_pretrained(path, trust_remote_code=True).eval(),  # the copied remote code
    ):
        c = loaded.config
        assert (c.open_set_score, c.open_set_threshold) == (score, threshold)
        got = torch.cat([o.open_set_scores for o in _outputs(loaded, plain[2], QUERIES)]).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    answers = pipeline("open-set-classification", model=path)(QUERIES)
    rejected = np.asarray([a["is_out_of_scope"] for a in answers])
    np.testing.assert_array_equal(rejected, expected < np.float32(threshold))
    assert 0 < rejected.sum() < len(QUERIES)
    assert all(a["label"] == "oos" for a, r in zip(answers, rejected, strict=True) if r)
    stock = pipeline("text-classification", model=path)(QUERIES)
    assert all(a["label"] == s["label"] for a, s, r in zip(answers, stock, rejected, strict=True) if not r)
    knn = pipeline("knn-classification", model=path)
    assert [a["is_out_of_scope"] for a in knn(QUERIES)] == rejected.tolist()


def test_set_open_set_checks_its_inputs(plain):
    model = MetricClassifierModel.from_pretrained(plain[0])
    with pytest.raises(ValueError, match="kNN reference"):
        model.set_open_set("knn", 0.5)
    with pytest.raises(ValueError, match="together"):
        model.set_open_set("msp", None)
    with pytest.raises(ValueError, match="unknown open-set score"):
        model.set_open_set("entropy", 0.5)


def test_evaluator_leaves_other_metrics_alone_and_reports_open_set():
    rng = np.random.default_rng(0)
    n, classes = 80, 4
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 3 * np.eye(classes)[labels]
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    every = np.ones(n, bool)
    p = EvalPredictions(logits, emb, labels, every, every)
    ref = (torch.as_tensor(emb), labels)
    before = MetricEvaluator()(p, ref).metrics
    assert MetricEvaluator(open_set=OpenSetSettings())(p, ref).metrics == before
    assert not any(k.startswith(("oos_", "in_scope")) for k in before)
    oos_logits = rng.normal(size=(20, classes))
    with_oos = EvalPredictions(
        np.concatenate([logits, oos_logits]),
        np.concatenate([emb, rng.normal(size=(20, 8)).astype(np.float32)]),
        np.concatenate([labels, np.full(20, OUT_OF_SCOPE_ID)]),
        np.ones(n + 20, bool),
        np.ones(n + 20, bool),
    )
    metrics = MetricEvaluator()(with_oos, ref).metrics
    for key, value in before.items():  # out-of-scope rows are no class: every other metric is unchanged
        assert metrics[key] == pytest.approx(value, rel=1e-6), key
    assert metrics["oos_auroc_msp"] > 0.8  # in-scope logits carry a +3 spike, the OOS ones do not
    for name in ("msp", "energy", "knn", "mahalanobis", "fused"):
        assert 0.0 <= metrics[f"oos_auroc_{name}"] <= 1.0 and 0.0 <= metrics[f"oos_fpr95_{name}"] <= 1.0
    ruled = MetricEvaluator(open_set=OpenSetSettings("msp", 0.5))(with_oos, ref).metrics
    assert {"in_scope_accuracy", "oos_recall", "oos_precision", "open_set_accuracy"} <= set(ruled)


def test_evaluator_draws_the_open_set_curve(tmp_path):
    from hf_metric.evaluation.evaluator import PlotSettings

    rng = np.random.default_rng(1)
    labels = np.concatenate([rng.integers(0, 3, 30), np.full(10, OUT_OF_SCOPE_ID)])
    logits = rng.normal(size=(40, 3))
    emb = rng.normal(size=(40, 4)).astype(np.float32)
    every = np.ones(40, bool)
    evaluator = MetricEvaluator(plots=PlotSettings(str(tmp_path)), open_set=OpenSetSettings("energy", 0.0))
    result = evaluator(EvalPredictions(logits, emb, labels, every, every), (emb[:30], labels[:30]), plot_tag="t")
    assert result.plots["open_set_curve"] == str(tmp_path / "open_set_curve_t.png")
    assert (tmp_path / "open_set_curve_t.png").stat().st_size > 0
    assert "in_scope_accuracy" in result.metrics
