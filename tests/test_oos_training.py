"""Training with known out-of-scope rows (`open_set.train_with_oos`): the losses against naive float64 loops, the
samplers, and a tiny run; with the switch off, label -1 rows count for exactly nothing (as today)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_parquet
from test_open_set_training import _oos_rows

from hf_metric.errors import ConfigError
from hf_metric.loading import load_config
from hf_metric.model.losses import build_classification_loss, build_metric_loss
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.model.objective import TrainingObjective
from hf_metric.run import train
from hf_metric.training.samplers import ClassBalancedBatchSampler, sampling_labels


def _objective(metric: str, oos: bool, oe: float = 0.0, **kwargs) -> TrainingObjective:
    return TrainingObjective(
        build_classification_loss("ce"), build_metric_loss(metric, **kwargs), 1.0, 1.0, metric, oos, oe
    )


def _unit(emb: np.ndarray) -> np.ndarray:
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _rows(labels, mask):
    """(anchors, candidates): anchors are in-scope in-loss rows; candidates add the in-loss out-of-scope rows."""
    anchors = [i for i in range(len(labels)) if labels[i] >= 0 and mask[i]]
    return anchors, [i for i in range(len(labels)) if labels[i] >= -1 and mask[i]]


def naive_supcon_oos(emb, labels, mask, tau):
    """SupCon (Khosla eq. 2) in float64 loops: -1 rows appear only in the anchors' denominators."""
    z = _unit(emb)
    anchors, candidates = _rows(labels, mask)
    losses = []
    for i in anchors:
        others = [a for a in candidates if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if positives:
            denom = sum(math.exp(z[i] @ z[a] / tau) for a in others)
            losses.append(-sum(z[i] @ z[p] / tau - math.log(denom) for p in positives) / len(positives))
    return float(np.mean(losses)) if losses else 0.0, len(losses)


def naive_triplet_oos(emb, labels, mask, margin):
    """Batch-hard triplet (euclidean on unit vectors): -1 rows are negatives of every anchor, never positives."""
    z = _unit(emb)
    anchors, candidates = _rows(labels, mask)
    losses = []
    for i in anchors:
        others = [a for a in candidates if a != i]
        pos = [np.linalg.norm(z[i] - z[p]) for p in others if labels[p] == labels[i]]
        neg = [np.linalg.norm(z[i] - z[n]) for n in others if labels[n] != labels[i]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0, len(losses)


def naive_ms_oos(emb, labels, mask, alpha, beta, base):
    """Multi-similarity (Wang et al. eq. 8) over all pairs: -1 rows are in every anchor's negative sum."""
    z = _unit(emb)
    anchors, candidates = _rows(labels, mask)
    losses = []
    for i in anchors:
        others = [a for a in candidates if a != i]
        pos = [z[i] @ z[p] for p in others if labels[p] == labels[i]]
        neg = [z[i] @ z[n] for n in others if labels[n] != labels[i]]
        if pos or neg:
            p_term = math.log1p(sum(math.exp(-alpha * (s - base)) for s in pos)) / alpha
            n_term = math.log1p(sum(math.exp(beta * (s - base)) for s in neg)) / beta
            losses.append(p_term + n_term)
    return float(np.mean(losses)) if losses else 0.0, len(losses)


def _batch(seed: int, n: int = 20):
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 4, size=n)  # about a fifth out of scope
    labels[:3] = -1
    labels[3] = -100  # no label at all: in no pair
    mask = (rng.random(n) > 0.2).astype(np.int64)
    return rng.normal(size=(n, 8)), labels, mask


CASES = [
    ("supcon", {"temperature": 0.2}, lambda e, y, m: naive_supcon_oos(e, y, m, 0.2)),
    ("triplet", {"margin": 0.3}, lambda e, y, m: naive_triplet_oos(e, y, m, 0.3)),
    ("multi_similarity", {}, lambda e, y, m: naive_ms_oos(e, y, m, 2.0, 50.0, 0.5)),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("name", "kwargs", "naive"), CASES, ids=[c[0] for c in CASES])
def test_metric_loss_with_oos_negatives_matches_naive(seed, name, kwargs, naive):
    emb, labels, mask = _batch(seed)
    objective = _objective(name, True, **kwargs)
    e, y, m = torch.tensor(emb, dtype=torch.float32), torch.tensor(labels), torch.tensor(mask)
    expected, anchors = naive(emb, labels, mask)
    out = objective(torch.zeros(len(y), 4), e, y, metric_mask=m)
    assert out.metric.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert objective.metric_count(y, objective.candidate_rows(y, m)).item() == anchors
    # the whole-set validation path agrees with the batch path
    assert objective.dataset_losses(torch.zeros(len(y), 4), e, y, metric_mask=m)[f"{name}_loss"] == pytest.approx(
        expected, rel=1e-5, abs=1e-6
    )


def test_oos_rows_are_never_positives_of_each_other():
    """Only out-of-scope rows besides one class's pair: the -1 rows add denominator terms, no anchors."""
    emb = torch.randn(6, 8)
    labels = torch.tensor([0, 0, -1, -1, -1, -1])
    on, off = _objective("supcon", True), _objective("supcon", False)
    assert on.metric_count(labels, on.candidate_rows(labels, None)).item() == 2
    assert on(torch.zeros(6, 2), emb, labels).metric.item() > off(torch.zeros(6, 2), emb, labels).metric.item()
    expected, _ = naive_supcon_oos(emb.double().numpy(), labels.numpy(), np.ones(6), 0.1)
    assert on(torch.zeros(6, 2), emb, labels).metric.item() == pytest.approx(expected, rel=1e-5)


def test_outlier_exposure_matches_naive_formula():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(10, 5))
    labels = np.array([0, 1, -1, 2, -1, -1, 3, -100, -1, 4])
    mask = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1])
    oos = [i for i in range(10) if labels[i] == -1 and mask[i]]
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    naive_oe = float(np.mean([-log_p[i].mean() for i in oos]))  # CE(uniform, softmax), float64
    ce_rows = [i for i in range(10) if labels[i] >= 0 and mask[i]]
    naive_ce = float(np.mean([-log_p[i, labels[i]] for i in ce_rows]))
    objective = TrainingObjective(
        build_classification_loss("ce"), build_metric_loss("supcon"), 1.0, 0.0, "supcon", True, 0.7
    )
    out = objective(
        torch.tensor(logits, dtype=torch.float32), torch.randn(10, 4), torch.tensor(labels), torch.tensor(mask)
    )
    assert out.outlier_exposure.item() == pytest.approx(naive_oe, rel=1e-5)
    assert out.classification.item() == pytest.approx(naive_ce, rel=1e-5)
    assert out.loss.item() == pytest.approx(naive_ce + 0.7 * naive_oe, rel=1e-5)
    assert objective.part_names == ("ce_loss", "supcon_loss", "oe_loss")
    counts = objective.row_counts(torch.tensor(labels), torch.tensor(mask))
    assert counts.tolist() == [len(ce_rows), len(oos)]
    # a window's share: sums over the given denominators
    out = objective(
        torch.tensor(logits, dtype=torch.float32),
        torch.randn(10, 4),
        torch.tensor(labels),
        torch.tensor(mask),
        denominators=(torch.tensor(10.0), torch.tensor(1.0), torch.tensor(8.0)),
    )
    assert out.outlier_exposure.item() == pytest.approx(naive_oe * len(oos) / 8, rel=1e-5)


@pytest.mark.parametrize("name", ["supcon", "triplet", "multi_similarity"])
def test_switch_off_treats_oos_rows_as_unlabelled_bit_for_bit(name):
    """Off (the default), a -1 row counts for exactly as little as a -100 row did before: same loss, same grads."""
    emb, labels, mask = _batch(7)
    ignored = np.where(labels == -1, -100, labels)
    results = []
    for y in (labels, ignored):
        e = torch.tensor(emb, dtype=torch.float32, requires_grad=True)
        logits = torch.tensor(emb[:, :4], dtype=torch.float32, requires_grad=True)
        out = _objective(name, False)(logits, e, torch.tensor(y), torch.tensor(mask), torch.tensor(mask))
        out.loss.backward()
        results.append((out.loss.detach(), e.grad, logits.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert _objective(name, False).part_names == ("ce_loss", f"{name}_loss")


def test_sampler_spreads_oos_rows_over_class_sized_pseudo_classes():
    labels = np.array([0] * 8 + [1] * 8 + [2] * 6 + [3] * 8 + [-1] * 30)
    spread = sampling_labels(labels)
    assert np.array_equal(spread[labels >= 0], labels[labels >= 0])
    pseudo, counts = np.unique(spread[labels == -1], return_counts=True)
    assert (pseudo < 0).all() and len(pseudo) == 4 and counts.max() - counts.min() <= 1  # ceil(30 / 8) pieces
    sampler = ClassBalancedBatchSampler(spread, batch_size=8, samples_per_class=2, seed=0)
    order = list(sampler)
    assert set(order) == set(range(len(labels)))  # every row, the out-of-scope ones included, once per epoch
    # as one class, 30 rows in 2-row groups would need 15 batches; spread, the epoch follows the row count
    assert len(order) // 8 == math.ceil(sum(math.ceil(c / 2) for c in np.unique(spread, return_counts=True)[1]) / 4)
    assert len(ClassBalancedBatchSampler(labels, 8, 2, seed=0)) // 8 == 15
    assert np.array_equal(sampling_labels(labels[labels >= 0]), labels[labels >= 0])


def test_config_checks(tmp_path, make_config):
    path = write_parquet(tmp_path / "d.parquet", synthetic_rows(5))
    with pytest.raises(ConfigError, match=r"open_set\.train_with_oos: needs data\.out_of_scope_label"):
        load_config(make_config(path, open_set={"train_with_oos": True}))
    with pytest.raises(ConfigError, match=r"open_set\.outlier_exposure_weight: needs open_set\.train_with_oos"):
        load_config(make_config(path, data={"out_of_scope_label": "oos"}, open_set={"outlier_exposure_weight": 0.5}))


def test_tiny_run_trains_with_oos_rows(tmp_path, make_config, caplog):
    rows = synthetic_rows(30, seed=2) + _oos_rows(40)
    config = make_config(
        write_parquet(tmp_path / "d.parquet", rows),
        data={"out_of_scope_label": "oos"},
        optimizer={"learning_rate": 1e-2},
        open_set={"enabled": True, "train_with_oos": True, "outlier_exposure_weight": 0.5},
    )
    metrics = train(load_config(config))
    best = tmp_path / "ckpt" / "best"
    saved = json.loads((best / "config.json").read_text())
    assert saved["out_of_scope_negatives"] is True and saved["outlier_exposure_weight"] == 0.5
    assert saved["out_of_scope_label"] == "oos" and "oos" not in saved["id2label"].values()
    assert 0.0 <= metrics["eval_oos_auroc_msp"] <= 1.0  # 10 of the 40 OOS rows validate
    state = json.loads(next((tmp_path / "ckpt").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [h for h in state["log_history"] if "oe_loss" in h]
    assert logged and all(math.isfinite(h["oe_loss"]) and h["oe_loss"] >= 0 for h in logged)
    assert "| out_of_scope_train_rows | 30 |" in (best / "README.md").read_text()  # 75 % of 40 train
    model = MetricClassifierModel.from_pretrained(best)
    assert model.config.knn_reference_size > 0 and (model.knn_reference_labels >= 0).all()


@pytest.mark.parametrize("name", ["supcon", "triplet", "multi_similarity"])
def test_anchor_count_with_oos_negatives_and_memory_matches_the_loss(name):
    """The window normalisation counts exactly the anchors the loss averages over, also when out-of-scope rows
    give an anchor its only negatives and a cross-batch memory adds candidates."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, -1, -1, 1, -100, -1])
    mask = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1])
    emb, memory = torch.randn(8, 6), (torch.randn(5, 6), torch.tensor([1, 2, 2, 0, 3]))
    objective = _objective(name, True)
    ones = torch.ones(())
    mean = objective(torch.zeros(8, 3), emb, labels, metric_mask=mask, memory=memory).metric
    total = objective(torch.zeros(8, 3), emb, labels, None, mask, (ones, ones, ones), memory=memory).metric
    count = objective.metric_count(labels, objective.candidate_rows(labels, mask), memory[1])
    assert total.item() == pytest.approx(mean.item() * count.item(), rel=1e-5)
    # triplet: the class-0 anchors have negatives only through the out-of-scope rows (and the memory)
    without = objective.metric_count(labels[:3], objective.candidate_rows(labels[:3], mask[:3]))
    with_oos = objective.metric_count(labels[:4], objective.candidate_rows(labels[:4], mask[:4]))
    assert with_oos.item() == 3 and without.item() == (0 if name == "triplet" else 3)
