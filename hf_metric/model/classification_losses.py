"""Classification losses on the head's logits: `loss.per_row(logits, labels, mask) -> (per_row, valid)`.

Rows with label < 0 (the ignore index -100) or `mask == 0` (classifier_mask = 0: unverified labels) count for
nothing and get no gradient. Computed in float32 under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masking import masked_mean
from .precision import compute_dtype, float32_math


def _valid_rows(labels: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows a classification loss counts (label >= 0 and mask != 0), and labels safe to index with."""
    valid = labels >= 0
    if mask is not None:
        valid = valid & mask.bool()
    return valid, torch.where(valid, labels, torch.zeros_like(labels))


@float32_math
def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy on raw logits (computed in float32) and the rows it counts for.

    Rows with `mask == 0` (e.g. `classifier_mask = 0`: unverified labels) and rows with label -100 are
    excluded; they get a zero loss and pass no gradient to the classifier. `label_smoothing` (Szegedy et al.
    2016) mixes the one-hot target with the uniform distribution, as in `F.cross_entropy`.
    """
    valid, safe_labels = _valid_rows(labels, mask)
    logits = logits.to(compute_dtype(logits))
    per_row = F.cross_entropy(logits, safe_labels, reduction="none", label_smoothing=label_smoothing)
    return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


class ClassificationLoss(nn.Module):
    """Base of classification losses: subclasses implement `per_row(logits, labels, mask) -> (per_row, valid)`
    (rows with label < 0 or mask 0 are not valid); `forward` is their masked mean."""

    def per_row(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(*self.per_row(logits, labels, mask))


class CrossEntropyLoss(ClassificationLoss):
    """Masked cross-entropy with optional label smoothing (`ce`); see `masked_cross_entropy`."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def per_row(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_cross_entropy(logits, labels, mask, label_smoothing=self.label_smoothing)


class FocalLoss(ClassificationLoss):
    r"""Softmax focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5), masked.

    .. math:: \mathrm{FL}(p_t) = -\alpha_t (1 - p_t)^\gamma \log p_t

    with p_t the softmax probability of the true class. The factor (1 - p_t)^gamma down-weights rows the model
    already gets right, so training focuses on hard (often minority-class) rows; gamma = 0 and alpha = None is
    plain cross-entropy. The paper's alpha is binary (alpha for the positive class, 1 - alpha for the
    negative); here `alpha` is either a scalar applied to every row or a per-class list/tensor indexed by the
    true class (e.g. inverse class frequencies). `alpha=None` means no weighting. Rows with label -100 or
    `mask == 0` count for nothing. Computed in float32.
    """

    alpha: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: float | list[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if alpha_t is not None and alpha_t.dim() > 1:
            raise ValueError(f"alpha must be a scalar or a per-class vector, got shape {tuple(alpha_t.shape)}")
        # Not persistent: a loss option, not model state; a buffer still follows `.to(device)`.
        self.register_buffer("alpha", alpha_t, persistent=False)

    @float32_math
    def per_row(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid, safe = _valid_rows(labels, mask)
        log_pt = F.log_softmax(logits.to(compute_dtype(logits)), dim=-1).gather(1, safe[:, None]).squeeze(1)
        per_row = -log_pt
        if self.gamma != 0:
            # 1 - p_t via expm1 is exact for p_t near 1; the clamp keeps (1 - p_t)^gamma's gradient finite there.
            one_minus_pt = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)
            per_row = one_minus_pt**self.gamma * per_row
        if self.alpha is not None:
            alpha = self.alpha.to(per_row.device)
            per_row = per_row * (alpha if alpha.dim() == 0 else alpha[safe])
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid
