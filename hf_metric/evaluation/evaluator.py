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
- open-set metrics (`open_set.evaluate_open_set`) when the set has out-of-scope rows (label id -1) or the model
  has a rejection threshold; out-of-scope rows are left out of every other metric;
- the pictures (`plots.evaluation_plots`).

`metric_names` lists what it returns; it is the list `checkpointing.save_best_by` is checked against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..model.open_set_scores import OUT_OF_SCOPE_ID
from .groups import GroupAnalysis, class_group_names, group_analysis
from .metrics import (
    bank_statistics,
    classification_metrics,
    collapse_statistics,
    knn_metrics,
    recall_at_k,
    top_k_accuracy,
)
from .names import metric_names
from .sharded_search import sharded_topk_neighbors


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
    head_logits: np.ndarray | None = None
    """The head's own logits when `logits` are kNN-fused (for the energy score); None: `logits`."""
    predicted_logits: np.ndarray | None = None
    """The logits the model predicts with when `logits` are the head's and the model fuses kNN votes (`evaluate`
    reports the head, while the open-set rule judges the model's own prediction); None: `logits`."""

    def open_set_inputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(prediction logits, head logits or None) as the model's open-set rule sees them."""
        if self.predicted_logits is None:
            return self.logits, self.head_logits
        return self.predicted_logits, self.head_logits if self.head_logits is not None else self.logits

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
        open_set: the model's rejection rule (`open_set.OpenSetSettings`); None: threshold-free open-set
            metrics only, and only for sets with out-of-scope rows.
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
        open_set=None,
        class_groups: Mapping[int, object] | None = None,
        always_fail_min_rows: int = 5,
    ) -> None:
        self.objective = objective
        self.retrieval = retrieval or RetrievalSettings()
        self.plots = plots
        self.class_names = class_names
        self.class_counts = class_counts
        self.open_set = open_set
        self.class_groups = class_groups
        self.always_fail_min_rows = always_fail_min_rows
        self.search = sharded_topk_neighbors
        """The neighbour search of the retrieval metrics. In a multi-process run (torch.distributed initialised)
        each process searches its share of the reference and the top k are merged, so every process must call
        the evaluator, as the trainer's evaluation does; otherwise the plain local search."""

    def metric_names(self) -> tuple[str, ...]:
        metric_part = self.objective.metric_part if self.objective is not None else "supcon_loss"
        return metric_names(metric_part, self.retrieval.recall_at_k, groups=self.class_groups is not None)

    def __call__(
        self,
        predictions: EvalPredictions,
        reference: tuple[torch.Tensor, np.ndarray] | None = None,
        plot_tag: str | None = None,
    ) -> EvaluationResult:
        """Metrics of `predictions`; retrieval metrics need a non-empty `reference` (embeddings, labels); pictures
        are drawn when this evaluator has plot settings and a `plot_tag` names them (e.g. `step200`)."""
        p = predictions
        oos = p.labels == OUT_OF_SCOPE_ID
        with_threshold = self.open_set is not None and self.open_set.threshold is not None
        if oos.any():  # out-of-scope rows belong to no class: only the open-set metrics use them
            p = replace(p, classifier_rows=p.classifier_rows & ~oos, metric_rows=p.metric_rows & ~oos)
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
        scores = None
        if oos.any() or with_threshold:
            open_set, scores = self.open_set_metrics(predictions, reference)
            metrics.update(open_set)
        analysis = None
        if self.class_groups is not None and ce.any():
            names = class_group_names(self.class_groups, p.logits.shape[1])
            analysis = group_analysis(p.logits[ce], p.labels[ce], names, self.always_fail_min_rows)
            metrics.update(analysis.metrics)
        result = EvaluationResult(metrics, collapsed_rows=int(ce.sum()) if collapsed else None)
        result.group_analysis = analysis
        if self.plots is not None and plot_tag is not None:
            result.plots = self.draw(p, plot_tag, analysis)
            if scores is not None and oos.any():
                result.plots.update(self.draw_open_set(predictions, scores, plot_tag))
        return result

    def open_set_metrics(self, p: EvalPredictions, reference) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Open-set metrics of the rows with classifier_mask = 1 or the out-of-scope label, and every score."""
        from .open_set import evaluate_open_set

        rows = p.classifier_rows | (p.labels == OUT_OF_SCOPE_ID)
        ref = None
        if reference is not None:
            ref_emb = reference[0].detach().float().cpu().numpy() if torch.is_tensor(reference[0]) else reference[0]
            ref = (np.asarray(ref_emb), np.asarray(reference[1]))
        logits, head_logits = p.open_set_inputs()
        return evaluate_open_set(
            logits[rows],
            p.embeddings[rows] if p.embeddings is not None else None,
            p.labels[rows],
            self.open_set,
            ref,
            head_logits[rows] if head_logits is not None else None,
        )

    def draw_open_set(self, p: EvalPredictions, scores: dict[str, np.ndarray], tag: str) -> dict[str, str]:
        """The accuracy / OOS-recall curve of every score (`open_set_curve_<tag>.png`)."""
        from .open_set import accuracy_recall_plot
        from .plots import save_png

        rows = p.classifier_rows | (p.labels == OUT_OF_SCOPE_ID)
        s = self.open_set
        point = (s.score, s.threshold) if s is not None and s.threshold is not None else None
        fig = accuracy_recall_plot(scores, p.open_set_inputs()[0][rows], p.labels[rows], point)
        return {"open_set_curve": save_png(fig, os.path.join(self.plots.out_dir, f"open_set_curve_{tag}.png"))}

    def losses(self, p: EvalPredictions) -> dict[str, float]:
        """The objective's loss and parts over the whole set at once (same numbers for any batch size)."""
        return self.objective.dataset_losses(p.logits, p.embeddings, p.labels, p.classifier_rows, p.metric_rows)

    def retrieval_metrics(self, p: EvalPredictions, ref_emb, ref_labels) -> dict[str, float]:
        """Recall@K (queries: metric rows), kNN accuracy/F1 (queries: classifier rows) against the reference, and
        the reference's own statistics."""
        r = self.retrieval
        ref_labels = np.asarray(ref_labels)
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
