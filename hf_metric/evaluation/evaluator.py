"""`MetricEvaluator`: a run's validation, composed of evaluator objects, plus its pictures.

In the spirit of sentence-transformers' evaluators, the same object serves the trainer (each evaluation during
training) and the user (a held-out file after training). It runs, in order (`builtin.py`):

- `LossEvaluator`: the loss and its parts over the whole set at once (through the model's `TrainingObjective`);
- `ClassificationEvaluator`: accuracy, macro-F1, top-5 accuracy over rows with classifier_mask = 1, and the
  collapse signals (distinct predictions, prediction entropy, logit spread);
- `RetrievalEvaluator`: against a reference set of labelled embeddings (the trainer's bank of recent training
  steps, or a model's stored training rows): Recall@K for rows with metric_mask = 1, kNN accuracy/F1 for rows with
  classifier_mask = 1, and the reference's own statistics (`bank_*`);
- `OpenSetEvaluator`: open-set metrics when the set has out-of-scope rows (label id -1) or the model has a
  rejection threshold; out-of-scope rows are left out of every other evaluator;
- `GroupEvaluator`: with a class -> group mapping, the error analysis by group;
- the user's evaluators (`metric_validation.evaluators`, see `base.Evaluator`);

then draws the pictures (`plots.evaluation_plots`). `metric_names` lists what it returns: the names
`checkpointing.save_best_by` may take.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..model.open_set_scores import OUT_OF_SCOPE_ID
from .base import EvalPredictions, Evaluator, Reference, SequentialEvaluator
from .builtin import (
    ClassificationEvaluator,
    GroupEvaluator,
    LossEvaluator,
    OpenSetEvaluator,
    RetrievalEvaluator,
    RetrievalSettings,
)
from .groups import GroupAnalysis
from .names import LOSS_METRICS
from .sharded_search import sharded_topk_neighbors

__all__ = ["EvalPredictions", "EvaluationResult", "MetricEvaluator", "PlotSettings", "RetrievalSettings"]


@dataclass
class PlotSettings:
    """Where the evaluation pictures go and how the embedding map is drawn."""

    out_dir: str
    embedding_map: str = "pca"


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
        extra: the user's evaluators, run after the built-in ones on the in-scope rows.
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
        extra: Iterable[Evaluator] = (),
    ) -> None:
        self.objective = objective
        self.plots = plots
        self.class_names = class_names
        self.class_counts = class_counts
        self.class_groups = class_groups
        self.losses = LossEvaluator(objective) if objective is not None else None
        self.classification = ClassificationEvaluator()
        self.retrieval = RetrievalEvaluator(retrieval or RetrievalSettings(), sharded_topk_neighbors)
        self.open_set = OpenSetEvaluator(open_set)
        self.groups = GroupEvaluator(class_groups, always_fail_min_rows) if class_groups is not None else None
        self.extra = list(extra)
        self.before_open_set = SequentialEvaluator(
            e for e in (self.losses, self.classification, self.retrieval) if e is not None
        )
        """The evaluators that see only in-scope rows and report before the open-set numbers."""
        self.after_open_set = SequentialEvaluator(e for e in (self.groups, *self.extra) if e is not None)
        """The group analysis and the user's evaluators, on in-scope rows too, reported last."""

    @property
    def search(self):
        """The neighbour search of the retrieval metrics (see `RetrievalEvaluator`)."""
        return self.retrieval.search

    @search.setter
    def search(self, search) -> None:
        self.retrieval.search = search

    def metric_names(self) -> tuple[str, ...]:
        names = (*self.before_open_set.metric_names(), *self.after_open_set.metric_names())
        if self.losses is None:  # the names a checkpoint can be chosen by include the loss even when unknown here
            return (*LOSS_METRICS, "supcon_loss", *names)
        return names

    def __call__(
        self, predictions: EvalPredictions, reference: Reference = None, plot_tag: str | None = None
    ) -> EvaluationResult:
        """Metrics of `predictions`; retrieval metrics need a non-empty `reference` (embeddings, labels); pictures
        are drawn when this evaluator has plot settings and a `plot_tag` names them (e.g. `step200`)."""
        oos = predictions.labels == OUT_OF_SCOPE_ID
        p = predictions
        if oos.any():  # out-of-scope rows belong to no class: only the open-set metrics use them
            p = replace(p, classifier_rows=p.classifier_rows & ~oos, metric_rows=p.metric_rows & ~oos)
        metrics = self.before_open_set(p, reference)
        metrics.update(self.open_set(predictions, reference))
        metrics.update(self.after_open_set(p, reference))
        analysis = self.groups.analysis if self.groups is not None else None
        collapsed = self.classification.collapsed
        result = EvaluationResult(metrics, collapsed_rows=int(p.classifier_rows.sum()) if collapsed else None)
        result.group_analysis = analysis
        if self.plots is not None and plot_tag is not None:
            result.plots = self.draw(p, plot_tag, analysis)
            if self.open_set.scores is not None and oos.any():
                result.plots.update(self.draw_open_set(predictions, self.open_set.scores, plot_tag))
        return result

    def draw_open_set(self, p: EvalPredictions, scores: dict[str, np.ndarray], tag: str) -> dict[str, str]:
        """The accuracy / OOS-recall curve of every score (`open_set_curve_<tag>.png`)."""
        from ..open_set.evaluation import accuracy_recall_plot
        from .plots import save_png

        rows = p.classifier_rows | (p.labels == OUT_OF_SCOPE_ID)
        s = self.open_set.settings
        point = (s.score, s.threshold) if s is not None and s.threshold is not None else None
        fig = accuracy_recall_plot(scores, p.open_set_inputs()[0][rows], p.labels[rows], point)
        return {"open_set_curve": save_png(fig, os.path.join(self.plots.out_dir, f"open_set_curve_{tag}.png"))}

    def draw(self, p: EvalPredictions, tag: str, analysis: GroupAnalysis | None = None) -> dict[str, str]:
        """The pictures of this evaluation into `plots.out_dir`, named with `tag`; name -> PNG path."""
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
