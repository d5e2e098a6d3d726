"""Classifier + nearest-neighbour fusion: class probabilities from the training rows nearest to a text.

A trained metric space already separates classes; a kNN vote over the stored training embeddings catches
rows the linear decision boundary gets wrong (rare phrasings that sit next to their own class's examples).
The fused prediction is ``(1 - w) * softmax(logits) + w * p_knn``, where ``p_knn`` spreads a softmax over the
k nearest reference rows' cosine similarities (temperature `T`) onto their classes (as in kNN-LM).
"""

from __future__ import annotations

import numpy as np
import torch

from .neighbors import topk_neighbors


def knn_class_probabilities(
    query_emb: torch.Tensor | np.ndarray,
    ref_emb: torch.Tensor | np.ndarray,
    ref_labels: torch.Tensor | np.ndarray,
    num_classes: int,
    k: int = 10,
    temperature: float = 0.05,
    exclude_self: bool = False,
) -> torch.Tensor:
    """(N_query, num_classes) probabilities: softmax(similarity / temperature) over the k nearest reference
    rows (cosine), summed per class. `ref_labels` are class ids in [0, num_classes)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores, indices = topk_neighbors(query_emb, ref_emb, k, "cos", exclude_self=exclude_self)
    labels = torch.as_tensor(ref_labels, device=indices.device).long()[indices]
    weights = torch.softmax(scores / temperature, dim=1)
    probs = torch.zeros(scores.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return probs.scatter_add_(1, labels, weights)


def fuse_probabilities(logits: torch.Tensor, knn_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * softmax(logits) + weight * knn_probs``; weight in [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * torch.softmax(logits.float(), dim=-1) + weight * knn_probs.to(logits.device)
