"""`MetricEvaluator`: one object that turns a labelled set's predictions into every validation metric and picture.

In the spirit of sentence-transformers' evaluators, the same object serves the trainer (each evaluation during
training) and the user (a held-out file after training). It computes

- the loss and its parts over the whole set at once (through the model's `TrainingObjective`);
- classification metrics over rows with classifier_mask = 1: accuracy, macro-F1, top-5 accuracy, and the
  collapse signals (distinct predictions, prediction entropy, logit spread);
- retrieval metrics against a reference set of labelled embeddings (the trainer's bank of recent training
  steps, or a model's stored training rows): Recall@K for rows with metric_mask = 1, kNN accuracy/F1 for rows with
  classifier_mask = 1, and the reference's own statistics (`bank_*`);
- with a class -> group mapping, the error analysis by group (`groups.group_analysis`: within-group accuracy by
  number of candidates, per-group accuracy, where the errors are, how close they are) and its picture;
- the pictures (`plots.evaluation_plots`).

`metric_names` lists what it returns; it is the list `checkpointing.save_best_by` is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .groups import GroupAnalysis, class_group_names, group_analysis
from .metrics import (
    bank_statistics,
    classification_metrics,
    collapse_statistics,
    knn_metrics,
    recall_at_k,
    top_k_accuracy,
)

CLASSIFICATION_METRICS = ("accuracy", "f1", "top5_accuracy")
KNN_METRICS = ("knn_accuracy", "knn_f1")
REFERENCE_METRICS = (
    "bank_intra_class_cosine",
    "bank_inter_class_cosine",
    "bank_mean_margin",
    "bank_positive_margin_fraction",
)
"""The reference statistics worth selecting a checkpoint by (the others, such as `bank_size`, are bookkeeping)."""
GROUP_METRICS = ("within_group_accuracy", "group_accuracy_min", "group_accuracy_macro")
"""Group-analysis numbers worth selecting a checkpoint by (returned when the evaluator knows the groups)."""


def metric_names(metric_part: str = "supcon_loss", recall_ks: Sequence[int] = (1, 5, 10)) -> tuple[str, ...]:
    """The metrics (without the `eval_` prefix) a `MetricEvaluator` returns and a checkpoint can be chosen by."""
    recalls = tuple(f"recall@{k}" for k in recall_ks)
    return ("loss", "ce_loss", metric_part, *CLASSIFICATION_METRICS, *recalls, *KNN_METRICS, *REFERENCE_METRICS)


@dataclass
class RetrievalSettings:
    """How evaluation rows are compared with the reference (the YAML `metric_validation` section)."""

    recall_at_k: tuple[int, ...] = (1, 5, 10)
    distance: str = "cos"
    knn_k: int = 10


@dataclass
class PlotSettings:
    """Where the evaluation pictures go and how the embedding map is drawn."""

    out_dir: str
    embedding_map: str = "pca"


@dataclass
class EvalPredictions:
    """What a model produced for a labelled set: logits, embeddings (or None), labels and the two row masks."""

    logits: np.ndarray
    embeddings: np.ndarray | None
    labels: np.ndarray
    classifier_rows: np.ndarray
    metric_rows: np.ndarray

    @classmethod
    def from_loop(cls, predictions, label_ids) -> EvalPredictions:
        """From the Trainer's evaluation loop: predictions `(logits[, embeddings])`, label_ids `(labels[, classifier
        mask[, metric mask]])` (missing masks mean every row)."""
        predictions = predictions if isinstance(predictions, tuple) else (predictions,)
        label_ids = label_ids if isinstance(label_ids, tuple) else (label_ids,)
        labels = np.asarray(label_ids[0])
        every = np.ones(len(labels), bool)
        return cls(
            logits=np.asarray(predictions[0]),
            embeddings=np.asarray(predictions[1]) if len(predictions) > 1 else None,
            labels=labels,
            classifier_rows=np.asarray(label_ids[1]).astype(bool) if len(label_ids) > 1 else every,
            metric_rows=np.asarray(label_ids[2]).astype(bool) if len(label_ids) > 2 else every,
        )


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    plots: dict[str, str] = field(default_factory=dict)
    collapsed_rows: int | None = None
    """Rows of a collapsed prediction set (None: no collapse); the caller decides how to warn."""
    group_analysis: GroupAnalysis | None = None
    """The error analysis by group (None: the evaluator knows no groups)."""


class MetricEvaluator:
    """Every validation metric of one labelled set (see the module docstring).

    Args:
        objective: the model's `TrainingObjective`, for the loss and its parts (None: no losses).
        retrieval: Recall@K / kNN settings.
        plots: where to draw the pictures (None: no pictures).
        class_names: id -> name, for the pictures.
        class_counts: training rows per class id, so the per-class F1 picture marks the rare classes.
        class_groups: class id -> group (a name or a set of names, as `PreparedData.class_groups`); given, every
            evaluation adds the error analysis by group (`groups.group_analysis`).
        always_fail_min_rows: a class counts as "always failing" with at least this many rows, none right.
    """

    def __init__(
        self,
        objective=None,
        retrieval: RetrievalSettings | None = None,
        plots: PlotSettings | None = None,
        class_names: Mapping[int, str] | None = None,
        class_counts: Mapping[int, int] | None = None,
        class_groups: Mapping[int, object] | None = None,
        always_fail_min_rows: int = 5,
    ) -> None:
        self.objective = objective
        self.retrieval = retrieval or RetrievalSettings()
        self.plots = plots
        self.class_names = class_names
        self.class_counts = class_counts
        self.class_groups = class_groups
        self.always_fail_min_rows = always_fail_min_rows

    def metric_names(self) -> tuple[str, ...]:
        metric_part = self.objective.metric_part if self.objective is not None else "supcon_loss"
        names = metric_names(metric_part, self.retrieval.recall_at_k)
        return names + GROUP_METRICS if self.class_groups is not None else names

    def __call__(
        self,
        predictions: EvalPredictions,
        reference: tuple[torch.Tensor, np.ndarray] | None = None,
        plot_tag: str | None = None,
    ) -> EvaluationResult:
        """Metrics of `predictions`; retrieval metrics need a non-empty `reference` (embeddings, labels); pictures
        are drawn when this evaluator has plot settings and a `plot_tag` names them (e.g. `step200`)."""
        p = predictions
        ce = p.classifier_rows
        metrics: dict[str, float] = {}
        if self.objective is not None and p.embeddings is not None:
            metrics.update(self.losses(p))
        metrics.update(classification_metrics(p.logits[ce], p.labels[ce]))
        metrics["top5_accuracy"] = top_k_accuracy(p.logits[ce], p.labels[ce], k=5)
        watch, collapsed = collapse_statistics(p.logits[ce], p.labels[ce])
        metrics.update(watch)
        if p.embeddings is not None and reference is not None and len(reference[1]) > 0:
            metrics.update(self.retrieval_metrics(p, *reference))
        analysis = None
        if self.class_groups is not None and ce.any():
            names = class_group_names(self.class_groups, p.logits.shape[1])
            analysis = group_analysis(p.logits[ce], p.labels[ce], names, self.always_fail_min_rows)
            metrics.update(analysis.metrics)
        result = EvaluationResult(metrics, collapsed_rows=int(ce.sum()) if collapsed else None)
        result.group_analysis = analysis
        if self.plots is not None and plot_tag is not None:
            result.plots = self.draw(p, plot_tag, analysis)
        return result

    def losses(self, p: EvalPredictions) -> dict[str, float]:
        """The objective's loss and parts over the whole set at once (same numbers for any batch size)."""
        return self.objective.dataset_losses(
            torch.as_tensor(p.logits),
            torch.as_tensor(p.embeddings, dtype=torch.float32),
            torch.as_tensor(p.labels),
            torch.as_tensor(p.classifier_rows),
            torch.as_tensor(p.metric_rows),
        )

    def retrieval_metrics(self, p: EvalPredictions, ref_emb, ref_labels) -> dict[str, float]:
        """Recall@K (queries: metric rows), kNN accuracy/F1 (queries: classifier rows) against the reference, and
        the reference's own statistics."""
        r = self.retrieval
        ref_labels = np.asarray(ref_labels)
        out: dict[str, float] = {}
        if p.metric_rows.any():
            m = p.metric_rows
            recalls = recall_at_k(p.embeddings[m], p.labels[m], ref_emb, ref_labels, r.recall_at_k, r.distance)
            out.update({f"recall@{k}": v for k, v in recalls.items()})
        if p.classifier_rows.any():
            c = p.classifier_rows
            out.update(knn_metrics(p.embeddings[c], p.labels[c], ref_emb, ref_labels, r.knn_k, None, r.distance))
        out.update({f"bank_{k}": float(v) for k, v in bank_statistics(ref_emb, ref_labels).items()})
        return out

    def draw(self, p: EvalPredictions, tag: str, analysis: GroupAnalysis | None = None) -> dict[str, str]:
        """The pictures of this evaluation into `plots.out_dir`, named with `tag`; name -> PNG path."""
        import os

        from .plots import evaluation_plots, save_png, top2_margin_histogram

        labelled, ce = p.labels >= 0, p.classifier_rows
        plots = evaluation_plots(
            self.plots.out_dir,
            tag,
            p.embeddings[labelled] if p.embeddings is not None else None,
            p.labels[labelled],
            p.labels[ce],
            np.asarray(p.logits[ce]).argmax(axis=-1),
            class_names=self.class_names,
            class_counts=self.class_counts,
            method=self.plots.embedding_map,
        )
        if analysis is not None and len(analysis.margins):
            name = "top2_margin_histogram"
            fig = top2_margin_histogram(analysis.margins, analysis.errors)
            plots[name] = save_png(fig, os.path.join(self.plots.out_dir, f"{name}_{tag}.png"))
        return plots
