"""`TrainingObjective`: the one owner of "model outputs + masks -> total loss and its logged parts".

    total = w_cls * classification(rows with label >= 0 and classifier_mask = 1)      (logged as `ce_loss`)
          + w_metric * metric(anchors with label >= 0 and metric_mask = 1)           (logged as `<name>_loss`)

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
from .precision import float32_math

ArrayLike = torch.Tensor | np.ndarray
"""What validation hands `dataset_losses`: tensors or numpy arrays."""

CLASSIFICATION_PART = "ce_loss"
"""Logged name of the classification part (whatever the classification loss type)."""


@dataclass
class ObjectiveOutput:
    """`loss` = w_cls * `classification` + w_metric * `metric`; the parts are unweighted."""

    loss: torch.Tensor
    classification: torch.Tensor
    metric: torch.Tensor


def rows_in(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows a loss part may use: a real label (>= 0, not the ignore index -100) and mask != 0."""
    keep = labels >= 0
    return keep & mask.bool() if mask is not None else keep


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
    ) -> None:
        super().__init__()
        if classification_weight < 0 or metric_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.classification = classification
        self.metric = metric
        self.classification_weight = float(classification_weight)
        self.metric_weight = float(metric_weight)
        self.metric_part = f"{metric_name}_loss"

    @classmethod
    def from_config(cls, config) -> TrainingObjective:
        """Built from a `MetricClassifierConfig` (its `classification_loss*` and `metric_loss*` fields)."""
        return cls(
            build_classification_loss(config.classification_loss, **(config.classification_loss_kwargs or {})),
            build_metric_loss(config.metric_loss, **(config.metric_loss_kwargs or {})),
            config.classification_loss_weight,
            config.metric_loss_weight,
            config.metric_loss,
        )

    @property
    def part_names(self) -> tuple[str, str]:
        """Logged names of the two parts: `ce_loss` and `<metric loss>_loss` (e.g. `supcon_loss`)."""
        return CLASSIFICATION_PART, self.metric_part

    def combine(self, classification: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
        return self.classification_weight * classification + self.metric_weight * metric

    def classification_count(self, labels: torch.Tensor, classifier_mask: torch.Tensor | None) -> torch.Tensor:
        """Rows the classification part averages over."""
        return rows_in(labels, classifier_mask).sum()

    def metric_count(
        self, labels: torch.Tensor, metric_mask: torch.Tensor | None, memory_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Anchors the metric part averages over (the loss's own `num_anchors` on the rows in the loss; with a
        memory of past embeddings, an anchor may find its pairs there too)."""
        keep = rows_in(labels, metric_mask).to(torch.int64)
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
        denominators: tuple[torch.Tensor, torch.Tensor] | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ObjectiveOutput:
        """The loss of one batch. Each part is its sum over this batch's valid rows divided by `denominators`
        (classification rows, metric anchors), by default this batch's own counts (a plain batch mean).
        `candidates`/`self_index`: compare this batch's anchors with more rows (e.g. from every process).
        `memory`: detached `(embeddings, labels)` of past batches, extra candidates (positives and negatives) for
        the metric loss, as in cross-batch memory (XBM, Wang et al. 2020); never anchors, no gradient."""
        zero = logits.new_zeros((), dtype=torch.float32)
        classification = metric = zero
        if self.classification_weight > 0:
            rows, valid = self.classification_rows(logits, labels, classifier_mask)
            classification = _part(rows, valid, None if denominators is None else denominators[0])
        if self.metric_weight > 0:
            if memory is not None:
                if candidates is None:
                    candidates = (embeddings, labels, metric_mask)
                    self_index = torch.arange(len(labels), device=labels.device)
                candidates = _with_memory(candidates, memory)
            rows, valid = self.metric_rows(embeddings, labels, metric_mask, candidates, self_index)
            metric = _part(rows, valid, None if denominators is None else denominators[1])
        return ObjectiveOutput(self.combine(classification, metric), classification, metric)

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
        everyone = (emb, labels, metric_mask)
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
