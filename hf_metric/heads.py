"""Classification heads on the pooled embedding. Each is a plain `nn.Module`: `head(embeddings, labels=None)`.

Heads that apply a margin use `labels` only in training; at inference they return plain (scaled) logits, so a
saved model predicts without labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LinearHead(nn.Module):
    """The usual affine classifier on the raw pooled output."""

    def __init__(self, in_features: int, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(embeddings)


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead}
"""`head.type` in the YAML -> head class. Every class takes `(in_features, num_labels, **head_kwargs)`."""


def build_head(head_type: str, in_features: int, num_labels: int, **head_kwargs: Any) -> nn.Module:
    if head_type not in HEADS:
        raise ValueError(f"unknown head type {head_type!r}; known: {sorted(HEADS)}")
    return HEADS[head_type](in_features, num_labels, **head_kwargs)
