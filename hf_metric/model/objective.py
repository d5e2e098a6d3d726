"""`TrainingObjective`: the one owner of "model outputs + masks -> total loss and its logged parts".

    total = w_cls * classification(rows with label >= 0 and classifier_mask = 1)      (logged as `ce_loss`)
          + w_metric * metric(anchors with label >= 0 and metric_mask = 1)           (logged as `<name>_loss`)
          + w_oe * outlier exposure(out-of-scope rows, label -1)                      (logged as `oe_loss`)

Known out-of-scope rows (`out_of_scope_negatives=True`, the `open_set.train_with_oos` switch; label id -1) are
never a class: CE and the anchors skip them, they enter the metric loss only as candidates under a label no
class has (`NEGATIVE_ONLY`), so they are negatives of every anchor and never positives (not even of each other),
and with `outlier_exposure_weight > 0` their softmax is pulled towards the uniform distribution (Hendrycks et al.
2019, "Deep Anomaly Detection with Outlier Exposure"): the mean over those rows of
CE(uniform, softmax(z)) = logsumexp(z) - mean_c z_c. Both off (the default), the objective is the one above
without the last term, computed exactly as before.

The model's forward (batch means), the trainer's `compute_loss` (normalised over a gradient-accumulation window
and over processes, by passing `denominators`) and validation (`dataset_losses`, the whole set at once) all call
this object; none of them weights or recomputes a loss itself. It knows nothing of processes or steps: the trainer
hands it the candidates gathered from other processes and the window's row counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .losses import Candidates, build_classification_loss, build_metric_loss, masked_mean
from .open_set_scores import OUT_OF_SCOPE_ID
from .precision import compute_dtype, float32_math

ArrayLike = torch.Tensor | np.ndarray
"""What validation hands `dataset_losses`: tensors or numpy arrays."""

CLASSIFICATION_PART = "ce_loss"
"""Logged name of the classification part (whatever the classification loss type)."""
OUTLIER_EXPOSURE_PART = "oe_loss"
"""Logged name of the outlier-exposure part (only when its weight is > 0)."""
NEGATIVE_ONLY = torch.iinfo(torch.int64).max
"""The candidate label known out-of-scope rows get in the metric loss: >= 0 (so a candidate), and no anchor's."""


@dataclass
class ObjectiveOutput:
    """`loss` = w_cls * `classification` + w_metric * `metric` (+ w_oe * `outlier_exposure`); parts unweighted."""

    loss: torch.Tensor
    classification: torch.Tensor
    metric: torch.Tensor
    outlier_exposure: torch.Tensor | None = None

    def parts(self) -> list[torch.Tensor]:
        """The parts in the order of `TrainingObjective.part_names`."""
        extra = [] if self.outlier_exposure is None else [self.outlier_exposure]
        return [self.classification, self.metric, *extra]


def rows_in(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows a loss part may use: a real label (>= 0, not the ignore index -100) and mask != 0."""
    keep = labels >= 0
    return keep & mask.bool() if mask is not None else keep


def outlier_rows(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Known out-of-scope rows (label id -1) with mask != 0."""
    keep = labels == OUT_OF_SCOPE_ID
    return keep & mask.bool() if mask is not None else keep


def negatives_only(labels: torch.Tensor) -> torch.Tensor:
    """Candidate labels with the out-of-scope rows turned into `NEGATIVE_ONLY` (a label no anchor has)."""
    return torch.where(labels == OUT_OF_SCOPE_ID, torch.full_like(labels, NEGATIVE_ONLY), labels)


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy between the uniform distribution and softmax(logits): logsumexp(z) - mean_c z_c."""
    z = logits.to(compute_dtype(logits))
    return torch.logsumexp(z, dim=-1) - z.mean(dim=-1)


class TrainingObjective(nn.Module):
    """Weighted sum of a classification loss (`hf_metric.model.losses.CLASSIFICATION_LOSSES`) on the logits and a
    metric loss (`METRIC_LOSSES`) on the L2-normalised embeddings, each over its own mask."""

    def __init__(
        self,
        classification: nn.Module,
        metric: nn.Module,
        classification_weight: float = 1.0,
        metric_weight: float = 1.0,
        metric_name: str = "supcon",
        out_of_scope_negatives: bool = False,
        outlier_exposure_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if classification_weight < 0 or metric_weight < 0 or outlier_exposure_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.classification = classification
        self.metric = metric
        self.classification_weight = float(classification_weight)
        self.metric_weight = float(metric_weight)
        self.metric_part = f"{metric_name}_loss"
        self.out_of_scope_negatives = bool(out_of_scope_negatives)
        self.outlier_exposure_weight = float(outlier_exposure_weight)

    @classmethod
    def from_config(cls, config) -> TrainingObjective:
        """Built from a `MetricClassifierConfig` (its `classification_loss*` and `metric_loss*` fields; a metric
        loss that mines `same_group_first` gets the config's `class_group_ids`)."""
        metric = build_metric_loss(config.metric_loss, **(config.metric_loss_kwargs or {}))
        if getattr(metric, "same_group_first", False) and getattr(config, "class_group_ids", None) is not None:
            metric.use_class_groups(config.class_group_ids)
        return cls(
            build_classification_loss(config.classification_loss, **(config.classification_loss_kwargs or {})),
            metric,
            config.classification_loss_weight,
            config.metric_loss_weight,
            config.metric_loss,
            getattr(config, "out_of_scope_negatives", False),
            getattr(config, "outlier_exposure_weight", 0.0),
        )

    @property
    def part_names(self) -> tuple[str, ...]:
        """Logged names of the parts: `ce_loss` and `<metric loss>_loss` (e.g. `supcon_loss`), then `oe_loss` when
        outlier exposure is on."""
        extra = (OUTLIER_EXPOSURE_PART,) if self.outlier_exposure_weight > 0 else ()
        return CLASSIFICATION_PART, self.metric_part, *extra

    def combine(self, classification: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
        return self.classification_weight * classification + self.metric_weight * metric

    def row_counts(self, labels: torch.Tensor, classifier_mask: torch.Tensor | None) -> torch.Tensor:
        """float32 `[classification rows, outlier-exposure rows]` (the second 0 when outlier exposure is off)."""
        ce_rows = rows_in(labels, classifier_mask).sum()
        outliers = outlier_rows(labels, classifier_mask).sum() if self.outlier_exposure_weight > 0 else 0 * ce_rows
        return torch.stack([ce_rows, outliers]).float()

    def candidate_rows(self, labels: torch.Tensor, metric_mask: torch.Tensor | None) -> torch.Tensor:
        """Rows the metric loss compares anchors with: the anchors' rows, plus the known out-of-scope rows when they
        are negatives (`out_of_scope_negatives`)."""
        keep = rows_in(labels, metric_mask)
        return keep | outlier_rows(labels, metric_mask) if self.out_of_scope_negatives else keep

    def own_candidates(
        self, embeddings: torch.Tensor, labels: torch.Tensor, metric_mask: torch.Tensor | None
    ) -> Candidates:
        """The rows themselves as the metric loss's candidates (a batch in `forward`, a dataset in
        `dataset_losses`): the `candidate_rows`; the callers relabel them once with `as_negatives`."""
        return embeddings, labels, self.candidate_rows(labels, metric_mask).to(torch.int64)

    def as_negatives(self, candidates: Candidates) -> Candidates:
        """Candidates with the out-of-scope rows relabelled `NEGATIVE_ONLY` when they are negatives."""
        if not self.out_of_scope_negatives:
            return candidates
        emb, labels, mask = candidates
        return emb, negatives_only(labels), mask

    def metric_count(
        self, labels: torch.Tensor, metric_mask: torch.Tensor | None, memory_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Anchors the metric part averages over (the loss's own `num_anchors` on the rows in the loss; with a
        memory of past embeddings, an anchor may find its pairs there too)."""
        keep = rows_in(labels, metric_mask).to(torch.int64)
        if self.out_of_scope_negatives:  # the batch's out-of-scope rows: extra candidates, never anchors
            negatives = labels[outlier_rows(labels, metric_mask)]
            extra = negatives if memory_labels is None else torch.cat([memory_labels.to(labels.device), negatives])
            memory_labels = negatives_only(extra)
        if memory_labels is None:
            return self.metric.num_anchors(labels, keep)
        return self.metric.num_anchors(labels, keep, memory_labels)

    @float32_math  # registered losses too compute in float32 under autocast
    def forward(
        self,
        logits: torch.Tensor,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        classifier_mask: torch.Tensor | None = None,
        metric_mask: torch.Tensor | None = None,
        denominators: tuple[torch.Tensor, ...] | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ObjectiveOutput:
        """The loss of one batch. Each part is its sum over this batch's valid rows divided by `denominators`
        (classification rows, metric anchors, and out-of-scope rows with outlier exposure), by default this
        batch's own counts (a plain batch mean).
        `candidates`/`self_index`: compare this batch's anchors with more rows (e.g. from every process).
        `memory`: detached `(embeddings, labels)` of past batches, extra candidates (positives and negatives) for
        the metric loss, as in cross-batch memory (XBM, Wang et al. 2020); never anchors, no gradient."""
        zero = logits.new_zeros((), dtype=torch.float32)
        classification = metric = zero
        if self.classification_weight > 0:
            rows, valid = self.classification_rows(logits, labels, classifier_mask)
            classification = _part(rows, valid, None if denominators is None else denominators[0])
        if self.metric_weight > 0:
            if (memory is not None or self.out_of_scope_negatives) and candidates is None:
                candidates = self.own_candidates(embeddings, labels, metric_mask)
                self_index = torch.arange(len(labels), device=labels.device)
            if memory is not None:
                candidates = _with_memory(candidates, memory)
            if candidates is not None:
                candidates = self.as_negatives(candidates)
            rows, valid = self.metric_rows(embeddings, labels, metric_mask, candidates, self_index)
            metric = _part(rows, valid, None if denominators is None else denominators[1])
        if self.outlier_exposure_weight == 0:
            return ObjectiveOutput(self.combine(classification, metric), classification, metric)
        outliers = outlier_rows(labels, classifier_mask)
        exposure = _part(uniform_cross_entropy(logits), outliers, None if denominators is None else denominators[2])
        total = self.combine(classification, metric) + self.outlier_exposure_weight * exposure
        return ObjectiveOutput(total, classification, metric, exposure)

    def classification_rows(
        self, logits: torch.Tensor, labels: torch.Tensor, classifier_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classification loss of each row and whether it counts (`rows_in`)."""
        return self.classification.per_row(logits, labels, rows_in(labels, classifier_mask))

    def metric_rows(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        metric_mask: torch.Tensor | None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The metric loss of each anchor and whether it counts; anchors and `candidates` (default: the anchors)
        are the rows `rows_in` their mask."""
        keep = rows_in(labels, metric_mask).to(torch.int64)
        if candidates is not None:
            cand_emb, cand_labels, cand_mask = candidates
            candidates = (cand_emb, cand_labels, rows_in(cand_labels, cand_mask).to(torch.int64))
        return self.metric.per_anchor(embeddings, labels, keep, candidates=candidates, self_index=self_index)

    @torch.no_grad()
    def dataset_losses(
        self,
        logits: ArrayLike,
        embeddings: ArrayLike,
        labels: ArrayLike,
        classifier_mask: ArrayLike | None = None,
        metric_mask: ArrayLike | None = None,
        chunk_size: int = 1024,
    ) -> dict[str, float]:
        """Loss and parts over a whole dataset at once (validation; arrays or tensors): every anchor against every
        other row, in chunks of anchors, so the numbers do not depend on batch size or process count."""
        logits, emb, labels = torch.as_tensor(logits), torch.as_tensor(embeddings).float(), torch.as_tensor(labels)
        classifier_mask, metric_mask = (
            None if m is None else torch.as_tensor(m) for m in (classifier_mask, metric_mask)
        )
        classification = masked_mean(*self.classification_rows(logits, labels, classifier_mask)).item()
        everyone = self.as_negatives(self.own_candidates(emb, labels, metric_mask))
        total, count = torch.zeros((), dtype=torch.float64), 0
        for start in range(0, len(emb), chunk_size):
            chunk = slice(start, start + chunk_size)
            rows, valid = self.metric_rows(
                emb[chunk],
                labels[chunk],
                None if metric_mask is None else metric_mask[chunk],
                candidates=everyone,
                self_index=torch.arange(start, min(start + chunk_size, len(emb))),
            )
            total, count = total + rows[valid].double().sum(), count + int(valid.sum())
        metric = total.item() / max(count, 1)
        return {
            "loss": self.classification_weight * classification + self.metric_weight * metric,
            CLASSIFICATION_PART: classification,
            self.metric_part: metric,
        }


def _with_memory(candidates: Candidates, memory: tuple[torch.Tensor, torch.Tensor]) -> Candidates:
    """Candidates followed by the memory rows (detached; every labelled memory row is in the loss)."""
    emb, labels, mask = candidates
    mem_emb, mem_labels = memory
    mem_emb = mem_emb.detach().to(emb.device, emb.dtype)
    mem_labels = mem_labels.to(labels.device)
    mask = torch.ones_like(labels) if mask is None else mask.to(torch.int64)
    mem_mask = torch.ones_like(mem_labels, dtype=torch.int64)
    return torch.cat([emb, mem_emb]), torch.cat([labels, mem_labels]), torch.cat([mask, mem_mask])


def _part(rows: torch.Tensor, valid: torch.Tensor, denominator: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid rows, or their sum over an external count (a window's share of its mean)."""
    if denominator is None:
        return masked_mean(rows, valid)
    return torch.where(valid, rows, torch.zeros_like(rows)).sum() / denominator.clamp(min=1)
