"""Masked losses on plain tensors, usable without the trainer.

Every loss here works per row and returns `(per_row_loss, valid)`: the trainer needs the sum and the count
separately to normalise over a whole gradient-accumulation window (and over processes), so that 2 x 8 rows
give the same update as 16. `masked_mean` turns that pair into the usual scalar; a batch with no valid row
gives 0, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over rows where `valid` is true; 0 (with a zero gradient) when no row is valid."""
    valid = valid.bool()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy on raw logits (computed in float32) and the rows it counts for.

    Rows with `mask == 0` (e.g. `classifier_mask = 0`: unverified labels) and rows with label -100 are
    excluded; they get a zero loss and pass no gradient to the classifier.
    """
    valid = labels >= 0
    if mask is not None:
        valid = valid & mask.bool()
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    per_row = F.cross_entropy(logits.float(), safe_labels, reduction="none")
    return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss (Khosla et al., 2020, "Supervised Contrastive Learning", eq. 2, L_out).

    For each anchor i with at least one positive:

    .. math::
        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log
            \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)}

    where z are L2-normalized embeddings, A(i) all candidate rows but i itself, and P(i) the candidates with
    the label of i. Rows with `mask == 0` are neither anchors nor candidates, so they get no gradient. Anchors
    with no positive are skipped; a batch without any positive pair gives 0. It needs batches with several
    rows per class: use P x K batches (`ClassBalancedBatchSampler`).

    Candidates default to the anchors themselves; pass `candidates` (e.g. embeddings gathered from every
    process) with `self_index` (the position of each anchor among the candidates, -1 for none) to contrast
    local anchors against a larger set.

    Example::

        loss_fn = SupConLoss(temperature=0.1)
        loss = loss_fn(F.normalize(emb, dim=-1), labels)
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @staticmethod
    def num_anchors(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """How many rows count as anchors: in the loss (`mask`) with another in-loss row of the same label."""
        valid = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
        same = (labels[:, None] == labels[None, :]) & valid[:, None] & valid[None, :]
        same.fill_diagonal_(False)
        return (same.any(dim=1) & valid).sum()

    def per_anchor(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with at least one positive)."""
        anchor_valid = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
        if candidates is None:
            cand_emb, cand_labels, cand_valid = embeddings, labels, anchor_valid
            self_index = torch.arange(len(labels), device=labels.device)
        else:
            cand_emb, cand_labels, cand_mask = candidates
            cand_valid = torch.ones_like(cand_labels, dtype=torch.bool) if cand_mask is None else cand_mask.bool()
            if self_index is None:
                self_index = torch.full_like(labels, -1)
        z = F.normalize(embeddings.float(), dim=-1)
        zc = F.normalize(cand_emb.float(), dim=-1)
        sim = z @ zc.T / self.temperature
        not_self = torch.arange(zc.shape[0], device=z.device)[None, :] != self_index[:, None]
        allowed = anchor_valid[:, None] & cand_valid[None, :] & not_self
        positive = allowed & (labels[:, None] == cand_labels[None, :])
        # Rows with no candidate at all get a finite dummy row, so that logsumexp never sees only -inf.
        has_candidate = allowed.any(dim=1, keepdim=True)
        logits = torch.where(allowed, sim, torch.full_like(sim, float("-inf")))
        logits = torch.where(has_candidate, logits, torch.zeros_like(sim))
        log_prob = sim - torch.logsumexp(logits, dim=1, keepdim=True)
        n_pos = positive.sum(dim=1)
        pos_sum = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        valid = n_pos > 0
        per_row = -pos_sum / n_pos.clamp(min=1)
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(*self.per_anchor(embeddings, labels, mask))
