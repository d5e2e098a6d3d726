"""Masks and reductions shared by every loss: which rows count, and a mean that is 0 (not NaN) over none."""

from __future__ import annotations

import torch

Candidates = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""`(embeddings, labels, mask or None)` of the rows the anchors are compared with (e.g. gathered from all
processes); `self_index` then gives the position of each anchor among them (-1 for none)."""


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over rows where `valid` is true; 0 (with a zero gradient) when no row is valid."""
    valid = valid.bool()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1)
