"""Evaluation metrics as plain NumPy functions (no Hub download, unlike `evaluate.load("accuracy")`)."""

from __future__ import annotations

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose prediction equals the label; 0.0 for no rows."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if len(labels) else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in `labels` or `predictions`.

    Same convention as scikit-learn's `f1_score(average="macro")`: a class with no true and no predicted row
    is left out, a class with a zero denominator scores 0.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    y_true, y_pred = inverse[: len(labels)], inverse[len(labels) :]
    n = len(classes)
    true_pos = np.bincount(y_true[y_true == y_pred], minlength=n).astype(float)
    support = np.bincount(y_true, minlength=n).astype(float)
    predicted = np.bincount(y_pred, minlength=n).astype(float)
    denom = support + predicted
    f1 = np.divide(2 * true_pos, denom, out=np.zeros(n), where=denom > 0)
    return float(f1.mean())


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of argmax predictions (rows already restricted to classifier_mask = 1)."""
    predictions = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": accuracy(predictions, labels), "f1": macro_f1(predictions, labels)}
