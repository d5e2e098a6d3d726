"""Masked losses on plain tensors, usable without the trainer.

Every loss here works per row and returns `(per_row_loss, valid)`: the trainer needs the sum and the count
separately to normalise over a whole gradient-accumulation window (and over processes), so that 2 x 8 rows
give the same update as 16. `masked_mean` turns that pair into the usual scalar; a batch with no valid row
gives 0, never NaN.

Classification losses (`build_classification_loss`): `ce`, `focal`; they take logits, labels and the
classifier mask: `loss.per_row(logits, labels, mask)`.

Metric losses (`build_metric_loss`): `supcon`, `triplet`, `multi_similarity`; they take embeddings, labels and
the metric mask: `loss.per_anchor(embeddings, labels, mask, candidates=None, self_index=None)`, and count their
anchors with `loss.num_anchors(labels, mask)` (the number of valid rows `per_anchor` would return).

Rows labelled -100 (or any label < 0) and rows with mask 0 never count, neither as anchors nor as candidates:
-100 is no class. Every loss computes in float32 with autocast off (`precision.float32_math`; float64 inputs
stay float64) and returns float32 for half-precision inputs, so fp16/bf16 training gives the float32 loss and
finite gradients (zero-distance pairs and batches without positives or negatives included).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .classification_losses import ClassificationLoss, CrossEntropyLoss, FocalLoss, masked_cross_entropy
from .masking import Candidates, masked_mean
from .metric_losses import MetricLoss, MultiSimilarityLoss, SupConLoss, TripletMarginLoss
from .registry import Registry

CLASSIFICATION_LOSSES = Registry("classification loss", {"ce": CrossEntropyLoss, "focal": FocalLoss})
"""Name -> classification loss: `ce` (label_smoothing=0.0), `focal` (gamma=2.0, alpha=None). Add your own with
`hf_metric.register_classification_loss("name")`: a module with `per_row(logits, labels, mask)`."""


def build_classification_loss(name: str, **kwargs: Any) -> nn.Module:
    """`CLASSIFICATION_LOSSES[name](**kwargs)`: a module with `per_row(logits, labels, mask) -> (per_row, valid)`."""
    return CLASSIFICATION_LOSSES.build(name, **kwargs)


METRIC_LOSSES = Registry(
    "metric loss", {"supcon": SupConLoss, "triplet": TripletMarginLoss, "multi_similarity": MultiSimilarityLoss}
)
"""Name -> metric loss: `supcon` (temperature=0.1), `triplet` (margin=0.2, distance="euclidean", soft=False),
`multi_similarity` (alpha=2.0, beta=50.0, base=0.5). Add your own with `hf_metric.register_metric_loss("name")`:
a `MetricLoss` subclass that implements `per_anchor`."""


def build_metric_loss(name: str, **kwargs: Any) -> nn.Module:
    """`METRIC_LOSSES[name](**kwargs)`: a module with `per_anchor`, `num_anchors` and `forward`."""
    return METRIC_LOSSES.build(name, **kwargs)


__all__ = [
    "CLASSIFICATION_LOSSES",
    "METRIC_LOSSES",
    "Candidates",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "MetricLoss",
    "MultiSimilarityLoss",
    "SupConLoss",
    "TripletMarginLoss",
    "build_classification_loss",
    "build_metric_loss",
    "masked_cross_entropy",
    "masked_mean",
]
