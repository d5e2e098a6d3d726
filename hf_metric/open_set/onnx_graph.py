"""The model's open-set score in traceable operations, so that an ONNX export rejects exactly as PyTorch does.

`MetricClassifierModel.open_set_scores` searches the stored training rows in blocks on worker threads and drops
classes without rows by boolean indexing: right for PyTorch, not for a traced graph. `OpenSetGraphScore` computes
the same score with dense operations only (the class filtering and float64 copies of the statistics done once,
here), for every score the model can store:

- `msp`: the largest softmax probability of the prediction (the kNN-fused one when the model fuses);
- `energy`: ``T * logsumexp(head_logits / T)``;
- `knn`: the largest cosine to the stored training rows (one dense product with all of them);
- `mahalanobis`: minus the smallest squared distance to a class mean under the stored precision (float64);
- `fused`: the mean of the components' z-scores with the stored statistics (float64).

A row is out of scope when this score is below `config.open_set_threshold` (compared in float32).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.open_set_scores import SCORE_NAMES, components

EXPORTABLE_SCORES = SCORE_NAMES
"""Every open-set score exports (the statistics they need are constants of the graph)."""


class OpenSetGraphScore(nn.Module):
    """`(logits, head_logits, embeddings) -> (batch,)` the configured score of a model with a rejection rule."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        c = model.config
        if c.open_set_score not in EXPORTABLE_SCORES:
            raise ValueError(f"open-set score {c.open_set_score!r} cannot be exported; exportable: {EXPORTABLE_SCORES}")
        self.names = components(c.open_set_score, c.open_set_fusion_stats)
        self.fused = c.open_set_score == "fused"
        self.stats = [tuple(c.open_set_fusion_stats[n]) for n in self.names] if self.fused else []
        self.temperature = float(c.open_set_energy_temperature)
        if "knn" in self.names:
            self.register_buffer("reference", F.normalize(model.knn_reference_embeddings.detach().float(), dim=-1))
        if "mahalanobis" in self.names:
            means = model.open_set_means.detach().double()
            means = means[torch.isfinite(means).all(dim=1)]  # classes without rows are never the nearest
            precision = model.open_set_precision.detach().double()
            self.register_buffer("means", means)
            self.register_buffer("mean_term", ((means @ precision) * means).sum(dim=1))
            self.register_buffer("precision", precision)

    def component(self, name: str, logits: torch.Tensor, head_logits: torch.Tensor, embeddings: torch.Tensor):
        if name == "msp":
            return torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        if name == "energy":
            return self.temperature * torch.logsumexp(head_logits.float() / self.temperature, dim=-1)
        if name == "knn":
            return (F.normalize(embeddings.float(), dim=-1) @ self.reference.T).amax(dim=-1)
        x = embeddings.double()
        xp = x @ self.precision
        dist = (xp * x).sum(dim=1, keepdim=True) - 2.0 * xp @ self.means.T + self.mean_term[None, :]
        return -dist.amin(dim=1)

    def forward(self, logits: torch.Tensor, head_logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        scores = [self.component(n, logits, head_logits, embeddings) for n in self.names]
        if not self.fused:
            return scores[0].float()
        parts = [(s.double() - mean) / std for s, (mean, std) in zip(scores, self.stats, strict=True)]
        return torch.stack(parts).mean(dim=0).float()
