"""Classifier + nearest-neighbour fusion: class probabilities from the training rows nearest to a text.

A trained metric space already separates classes; a kNN vote over the stored training embeddings catches
rows the linear decision boundary gets wrong (rare phrasings that sit next to their own class's examples).
The fused prediction is ``(1 - w) * softmax(logits) + w * p_knn``, where ``p_knn`` spreads a softmax over the
k nearest reference rows' cosine similarities (temperature `T`) onto their classes (as in kNN-LM).

This is the ONE definition of that vote (`softmax_vote`) and of the fusion (`fused_log_probabilities`): the
model's forward uses them after its blocked exact search (`knn_class_probabilities`), the exported inference
graph (`hf_metric.inference.onnx_module`) after a dense top-k that traces to ONNX. Only traceable operations
here. (The evaluation metrics' kNN classifier is a different rule on purpose: weights ``(1 + cos) / 2`` and a
majority vote with ties to the nearest class, `hf_metric.evaluation.metrics.knn_vote`.)
"""

from __future__ import annotations

import numpy as np
import torch

from .neighbors import topk_neighbors

LOG_FLOOR = 1e-12
"""Fused probabilities are clamped here before the log, so a class no one voted for has a finite logit."""


def softmax_vote(
    scores: torch.Tensor, neighbor_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """(N, num_classes) probabilities: softmax(scores / temperature) over each row's neighbours (their cosine
    similarities `scores`, (N, k)), summed onto the neighbours' classes `neighbor_labels` ((N, k) ids in
    [0, num_classes))."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    weights = torch.softmax(scores / temperature, dim=1)
    probs = torch.zeros(weights.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return probs.scatter_add(1, neighbor_labels.long(), weights)


def knn_class_probabilities(
    query_emb: torch.Tensor | np.ndarray,
    ref_emb: torch.Tensor | np.ndarray,
    ref_labels: torch.Tensor | np.ndarray,
    num_classes: int,
    k: int = 10,
    temperature: float = 0.05,
    exclude_self: bool = False,
) -> torch.Tensor:
    """(N_query, num_classes) probabilities: `softmax_vote` over the k nearest reference rows (cosine, exact
    blocked search). `ref_labels` are class ids in [0, num_classes)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores, indices = topk_neighbors(query_emb, ref_emb, k, "cos", exclude_self=exclude_self)
    labels = torch.as_tensor(ref_labels, device=indices.device).long()[indices]
    return softmax_vote(scores, labels, num_classes, temperature)


def fuse_probabilities(logits: torch.Tensor, knn_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * softmax(logits) + weight * knn_probs``; weight in [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * torch.softmax(logits.float(), dim=-1) + weight * knn_probs.to(logits.device)


def fused_log_probabilities(logits: torch.Tensor, knn_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """The fused prediction as the model's `logits`: ``log(max(fuse_probabilities, LOG_FLOOR))``."""
    return fuse_probabilities(logits, knn_probs, weight).clamp_min(LOG_FLOOR).log()
