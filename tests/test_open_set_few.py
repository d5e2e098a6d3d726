"""The default open-set calibration with few known outliers, on a mixture whose score distributions are known.

In-scope scores ~ N(2, 1), known out-of-scope ~ N(0, 1), and at test time also an out-of-scope kind validation
never showed, ~ N(1, 0.5). A threshold t then has the TRUE in-scope recall 1 - Phi(t - 2) (the normal CDF, not an
estimate), so the rule's error is measured exactly, over many seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_metric.model.open_set_scores import OUT_OF_SCOPE_ID
from hf_metric.open_set.calibration import AUTO_IN_SCOPE_RECALL, MIN_OOS_ROWS, calibrate

IN_SCOPE_ROWS = 2000
SEEDS = range(20)


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def true_in_scope_recall(t: float) -> float:
    return 1.0 - phi(t - 2.0)


def true_unseen_rejection(t: float) -> float:
    """Share of the unseen out-of-scope kind N(1, 0.5) below t."""
    return phi((t - 1.0) / 0.5)


def validation(oos_rows: int, seed: int):
    """(scores, logits, labels): in-scope rows of 4 classes, all argmax-correct, and `oos_rows` known outliers."""
    rng = np.random.default_rng(seed)
    fused = np.concatenate([rng.normal(2.0, 1.0, IN_SCOPE_ROWS), rng.normal(0.0, 1.0, oos_rows)]).astype(np.float32)
    labels = np.concatenate([np.arange(IN_SCOPE_ROWS) % 4, np.full(oos_rows, OUT_OF_SCOPE_ID)])
    logits = np.zeros((len(labels), 4), dtype=np.float32)
    logits[np.arange(IN_SCOPE_ROWS), labels[:IN_SCOPE_ROWS]] = 1.0
    # a second score, worse, that a ranking on a handful of rows could pick by chance
    noisy = (fused + rng.normal(0.0, 1.0, len(fused))).astype(np.float32)
    return {"msp": noisy, "fused": fused}, logits, labels


@pytest.mark.parametrize(("oos_rows", "tolerance"), [(5, 0.05), (10, 0.05), (50, 0.02)])
def test_default_rule_keeps_the_target_recall_with_few_outliers(oos_rows, tolerance):
    errors, unseen_default, unseen_accuracy = [], [], []
    for seed in SEEDS:
        scores, logits, labels = validation(oos_rows, seed)
        result = calibrate(scores, logits, labels, "auto", "auto")
        assert (result.criterion, result.score, result.target) == ("in_scope_recall", "fused", AUTO_IN_SCOPE_RECALL)
        errors.append(abs(true_in_scope_recall(result.threshold) - AUTO_IN_SCOPE_RECALL))
        unseen_default.append(true_unseen_rejection(result.threshold))
        legacy = calibrate(scores, logits, labels, "auto", "accuracy")
        unseen_accuracy.append(true_unseen_rejection(legacy.threshold))
    assert max(errors) <= tolerance, errors
    # chasing accuracy on a handful of outliers rejects less of the kind validation never showed
    assert np.mean(unseen_default) > np.mean(unseen_accuracy)


def test_chasing_accuracy_misses_the_target_on_the_same_data():
    """The check above can fail: the accuracy rule on 50 outliers lands far from 95 % in-scope recall."""
    errors = []
    for seed in SEEDS:
        scores, logits, labels = validation(50, seed)
        threshold = calibrate(scores, logits, labels, "fused", "accuracy").threshold
        errors.append(abs(true_in_scope_recall(threshold) - 0.95))
    assert np.mean(errors) > 0.02


def test_the_choice_is_reported_with_its_evidence():
    scores, logits, labels = validation(10, 0)
    result = calibrate(scores, logits, labels, "auto", "auto", target=0.9)
    assert (result.in_scope_rows, result.oos_rows, result.target) == (IN_SCOPE_ROWS, 10, 0.9)
    line = result.describe()
    for part in ("fused", "in_scope_recall", "target 0.9", f"{IN_SCOPE_ROWS} in-scope", "10 out-of-scope", "< 100"):
        assert part in line, line
    summary = result.summary()
    assert summary["reason"] == result.reason and summary["threshold"] == result.threshold
    assert summary["metrics"]["in_scope_recall"] >= 0.9


def test_enough_outliers_choose_by_accuracy_as_before():
    scores, logits, labels = validation(MIN_OOS_ROWS, 1)
    auto = calibrate(scores, logits, labels, "auto", "auto")
    legacy = calibrate(scores, logits, labels, "auto", None)
    assert auto.criterion == "accuracy" and f">= {MIN_OOS_ROWS}" in auto.reason
    assert (auto.score, auto.threshold) == (legacy.score, legacy.threshold)


def test_explicit_criteria_and_no_outliers_behave_as_before():
    scores, logits, labels = validation(10, 2)
    explicit = calibrate(scores, logits, labels, "msp", "fpr", 0.2)
    assert explicit.criterion == "fpr" and explicit.score == "msp" and explicit.reason == ""
    in_scope = labels != OUT_OF_SCOPE_ID
    only_in = {k: v[in_scope] for k, v in scores.items()}
    auto = calibrate(only_in, logits[in_scope], labels[in_scope], "auto", "auto")
    legacy = calibrate(only_in, logits[in_scope], labels[in_scope], "auto", None)
    assert auto.threshold == legacy.threshold and "no out-of-scope rows" in auto.reason
