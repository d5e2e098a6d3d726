"""The built-in evaluators: one class per metric family of the validation (`base.Evaluator`).

`evaluator.MetricEvaluator` composes them (and any user evaluator) into a run's validation. Besides their numbers,
three keep what their pictures and reports need from the last call: `ClassificationEvaluator.collapsed`,
`OpenSetEvaluator.scores`, `GroupEvaluator.analysis`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..data.groups import class_group_names
from ..model.open_set_scores import OUT_OF_SCOPE_ID
from .base import EvalPredictions, Evaluator, Reference
from .groups import GroupAnalysis, group_analysis
from .metrics import (
    bank_statistics,
    classification_metrics,
    collapse_statistics,
    knn_metrics,
    recall_at_k,
    top_k_accuracy,
)
from .names import CLASSIFICATION_METRICS, GROUP_METRICS, KNN_METRICS, LOSS_METRICS, REFERENCE_METRICS
from .sharded_search import sharded_topk_neighbors


@dataclass
class RetrievalSettings:
    """How evaluation rows are compared with the reference (the YAML `metric_validation` section)."""

    recall_at_k: tuple[int, ...] = (1, 5, 10)
    distance: str = "cos"
    knn_k: int = 10


class LossEvaluator(Evaluator):
    """The objective's loss and its parts over the whole set at once (same numbers for any batch size)."""

    def __init__(self, objective) -> None:
        self.objective = objective

    def metric_names(self) -> tuple[str, ...]:
        return (*LOSS_METRICS, self.objective.metric_part)

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        p = predictions
        if p.embeddings is None:
            return {}
        return self.objective.dataset_losses(p.logits, p.embeddings, p.labels, p.classifier_rows, p.metric_rows)


class ClassificationEvaluator(Evaluator):
    """Accuracy, macro-F1 and top-5 accuracy of the rows with classifier_mask = 1, and the collapse watch
    (distinct predictions, prediction entropy, logit spread); `collapsed` tells whether the last set collapsed."""

    collapsed: bool = False

    def metric_names(self) -> tuple[str, ...]:
        return CLASSIFICATION_METRICS

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        ce = predictions.classifier_rows
        logits, labels = predictions.logits[ce], predictions.labels[ce]
        metrics = classification_metrics(logits, labels)
        metrics["top5_accuracy"] = top_k_accuracy(logits, labels, k=5)
        watch, self.collapsed = collapse_statistics(logits, labels)
        return {**metrics, **watch}


class RetrievalEvaluator(Evaluator):
    """Against a labelled reference (the trainer's bank, a model's stored rows): Recall@K for the rows with
    metric_mask = 1, kNN accuracy/F1 for the rows with classifier_mask = 1, and the reference's own statistics.

    `search` is the neighbour search: the default shards the reference across processes when torch.distributed
    is initialised (every process must then call the evaluator, as the trainer's evaluation does)."""

    def __init__(self, settings: RetrievalSettings | None = None, search=sharded_topk_neighbors) -> None:
        self.settings = settings or RetrievalSettings()
        self.search = search

    def metric_names(self) -> tuple[str, ...]:
        return (*(f"recall@{k}" for k in self.settings.recall_at_k), *KNN_METRICS, *REFERENCE_METRICS)

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        p = predictions
        if p.embeddings is None or reference is None or len(reference[1]) == 0:
            return {}
        ref_emb, ref_labels = reference[0], np.asarray(reference[1])
        r = self.settings
        out: dict[str, float] = {}
        if p.metric_rows.any():
            m = p.metric_rows
            recalls = recall_at_k(
                p.embeddings[m], p.labels[m], ref_emb, ref_labels, r.recall_at_k, r.distance, search=self.search
            )
            out.update({f"recall@{k}": v for k, v in recalls.items()})
        if p.classifier_rows.any():
            c = p.classifier_rows
            out.update(
                knn_metrics(
                    p.embeddings[c], p.labels[c], ref_emb, ref_labels, r.knn_k, None, r.distance, search=self.search
                )
            )
        out.update({f"bank_{k}": float(v) for k, v in bank_statistics(ref_emb, ref_labels).items()})
        return out


class OpenSetEvaluator(Evaluator):
    """Open-set metrics of the rows with classifier_mask = 1 or the out-of-scope label (id -1), with the model's
    rejection rule `settings` (`open_set.OpenSetSettings`; None: threshold-free metrics only). It runs when the
    set has out-of-scope rows or the rule has a threshold; `scores` keeps every score of the last call."""

    def __init__(self, settings=None) -> None:
        self.settings = settings
        self.scores: dict[str, np.ndarray] | None = None

    def applies(self, predictions: EvalPredictions) -> bool:
        with_threshold = self.settings is not None and self.settings.threshold is not None
        return bool((predictions.labels == OUT_OF_SCOPE_ID).any()) or with_threshold

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        from ..open_set.evaluation import evaluate_open_set

        self.scores = None
        if not self.applies(predictions):
            return {}
        p = predictions
        rows = p.classifier_rows | (p.labels == OUT_OF_SCOPE_ID)
        ref = None
        if reference is not None:
            ref_emb = reference[0].detach().float().cpu().numpy() if torch.is_tensor(reference[0]) else reference[0]
            ref = (np.asarray(ref_emb), np.asarray(reference[1]))
        logits, head_logits = p.open_set_inputs()
        metrics, self.scores = evaluate_open_set(
            logits[rows],
            p.embeddings[rows] if p.embeddings is not None else None,
            p.labels[rows],
            self.settings,
            ref,
            head_logits[rows] if head_logits is not None else None,
        )
        return metrics


class GroupEvaluator(Evaluator):
    """The error analysis by group (`groups.group_analysis`: within-group accuracy by number of candidates,
    per-group accuracy, where the errors are) from a class id -> group mapping (a name or a set of names, as
    `PreparedData.class_groups`); `analysis` keeps the last one for the report and its picture."""

    def __init__(self, class_groups: Mapping[int, object], always_fail_min_rows: int = 5) -> None:
        self.class_groups = class_groups
        self.always_fail_min_rows = always_fail_min_rows
        self.analysis: GroupAnalysis | None = None

    def metric_names(self) -> tuple[str, ...]:
        return GROUP_METRICS

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        ce = predictions.classifier_rows
        self.analysis = None
        if not ce.any():
            return {}
        names = class_group_names(self.class_groups, predictions.logits.shape[1])
        logits, labels = predictions.logits[ce], predictions.labels[ce]
        self.analysis = group_analysis(logits, labels, names, self.always_fail_min_rows)
        return dict(self.analysis.metrics)
