"""Out-of-scope scores: how much a row looks like one of the trained classes (higher = more in-scope).

A classifier always picks a class, even for inputs that belong to none. Each score below ranks rows by how
in-scope they look; a threshold on one of them (chosen on validation data, `hf_metric.open_set.evaluation`)
turns the classifier into an open-set one. Every score follows the same convention: **higher = in-scope**.

- `msp`: maximum softmax probability (Hendrycks & Gimpel 2017), the baseline; cheap, but a softmax is
  over-confident far from the training data.
- `energy`: ``T * logsumexp(logits / T)``, the negative free energy (Liu et al. 2020); uses the logits'
  magnitude, which the softmax throws away. Computed on the head's own logits (not kNN-fused log-probabilities,
  whose logsumexp is always 0).
- `knn`: the largest cosine similarity to the stored training embeddings (Sun et al. 2022, k = 1); needs the
  model's kNN reference (`set_knn_reference`).
- `mahalanobis`: minus the smallest squared Mahalanobis distance to a class mean, with one covariance shared
  by all classes (Lee et al. 2018), fitted on labelled embeddings (`fit_mahalanobis`).
- `fused`: the average of the component scores, each z-normalised by the mean and standard deviation it has
  on in-scope validation rows (`fusion_statistics`), so no component dominates by its scale.

This file travels with saved models as remote code (relative imports only), so a loaded model computes the
same score at inference that was calibrated in evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .neighbors import topk_neighbors

OUT_OF_SCOPE_ID = -1
"""Label id of out-of-scope rows in evaluation data (never a class; loss parts skip labels < 0)."""
BASE_SCORES = ("msp", "energy", "knn", "mahalanobis")
SCORE_NAMES = (*BASE_SCORES, "fused")

Array = torch.Tensor | np.ndarray


def _tensor(x: Array, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(dtype)


def max_softmax(logits: Array) -> torch.Tensor:
    """(N,) largest softmax probability."""
    return torch.softmax(_tensor(logits), dim=-1).amax(dim=-1)


def energy(logits: Array, temperature: float = 1.0) -> torch.Tensor:
    """(N,) negative energy ``T * logsumexp(logits / T)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature * torch.logsumexp(_tensor(logits) / temperature, dim=-1)


def knn_max_cosine(embeddings: Array, reference: Array) -> torch.Tensor:
    """(N,) cosine similarity to the nearest reference row (blocked exact search, `neighbors.topk_neighbors`)."""
    if len(reference) == 0:
        raise ValueError("the kNN score needs reference embeddings (none are stored)")
    scores, _ = topk_neighbors(embeddings, reference, 1, "cos")
    return scores[:, 0]


def fit_mahalanobis(
    embeddings: Array, labels: Array, num_classes: int, ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means `(num_classes, dim)` and the shared precision `(dim, dim)` of labelled embeddings.

    The covariance is pooled over classes, ``sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T / N``, then
    `ridge` times its mean variance is added to the diagonal before inverting: normalised embeddings lie on a
    sphere, and with fewer rows than dimensions the plain covariance is singular. Rows with labels < 0 are
    ignored; a class without rows gets an infinite mean (it is never the nearest). Computed in float64.
    """
    x, y = _tensor(embeddings, torch.float64), _tensor(labels, torch.int64)
    keep = y >= 0
    x, y = x[keep], y[keep]
    if x.shape[0] < 2:
        raise ValueError("the Mahalanobis score needs at least 2 labelled embeddings")
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
    means = sums / counts.clamp(min=1)[:, None]
    centred = x - means[y]
    cov = centred.T @ centred / x.shape[0]
    cov += ridge * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(x.shape[1], dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    means[counts == 0] = float("inf")
    return means.float(), precision.float()


def mahalanobis(embeddings: Array, means: Array, precision: Array, chunk_size: int = 4096) -> torch.Tensor:
    """(N,) minus the smallest squared Mahalanobis distance ``(x - mu_c)^T P (x - mu_c)`` over classes."""
    x = _tensor(embeddings, torch.float64)
    mu, p = _tensor(means, torch.float64).to(x.device), _tensor(precision, torch.float64).to(x.device)
    present = torch.isfinite(mu).all(dim=1)
    mu = mu[present]
    mu_p = mu @ p
    mu_term = (mu_p * mu).sum(dim=1)
    out = []
    for start in range(0, x.shape[0], chunk_size):  # (chunk, C) distances at a time
        xc = x[start : start + chunk_size]
        xp = xc @ p
        dist = (xp * xc).sum(dim=1, keepdim=True) - 2.0 * xp @ mu.T + mu_term[None, :]
        out.append(-dist.amin(dim=1))
    return torch.cat(out).float() if out else torch.zeros(0)


def base_scores(
    logits: Array | None,
    embeddings: Array | None = None,
    reference: Array | None = None,
    means: Array | None = None,
    precision: Array | None = None,
    names: tuple[str, ...] = BASE_SCORES,
    energy_temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Every score of `names` whose inputs are given: msp/energy need logits, knn embeddings + reference,
    mahalanobis embeddings + (means, precision)."""
    out: dict[str, torch.Tensor] = {}
    if logits is not None and "msp" in names:
        out["msp"] = max_softmax(logits)
    if logits is not None and "energy" in names:
        out["energy"] = energy(logits, energy_temperature)
    if embeddings is not None and reference is not None and len(reference) > 0 and "knn" in names:
        out["knn"] = knn_max_cosine(embeddings, reference)
    if embeddings is not None and means is not None and precision is not None and "mahalanobis" in names:
        out["mahalanobis"] = mahalanobis(embeddings, means, precision)
    return out


def fusion_statistics(scores: Mapping[str, Array], in_scope: Array | None = None) -> dict[str, list[float]]:
    """Mean and standard deviation of each score over the in-scope rows (all rows when `in_scope` is None):
    the z-normalisation `fuse` applies. Saved in the model config as `open_set_fusion_stats`."""
    stats = {}
    for name, values in scores.items():
        v = _tensor(values, torch.float64)
        if in_scope is not None:
            v = v[_tensor(in_scope, torch.bool)]
        if v.numel() < 2:
            raise ValueError("fusion statistics need at least 2 in-scope rows")
        stats[name] = [float(v.mean()), max(float(v.std()), 1e-12)]
    return stats


def fuse(scores: Mapping[str, Array], stats: Mapping[str, list[float]]) -> torch.Tensor:
    """(N,) mean over the components in `stats` of ``(score - mean) / std``."""
    missing = [name for name in stats if name not in scores]
    if missing or not stats:
        raise ValueError(f"the fused score needs the scores {sorted(stats)}; missing {missing}")
    parts = [(_tensor(scores[name], torch.float64) - m) / s for name, (m, s) in stats.items()]
    return torch.stack(parts).mean(dim=0).float()


def is_out_of_scope(scores: Array, threshold: float | None) -> torch.Tensor:
    """(N,) bool: the score is below `threshold`, compared in float32 as it was calibrated (candidate
    thresholds are float32 scores); all False when `threshold` is None (no rejection)."""
    s = _tensor(scores)
    if threshold is None:
        return torch.zeros(s.shape, dtype=torch.bool)
    return s < torch.tensor(threshold, dtype=torch.float32, device=s.device)


def components(score: str, fusion_stats: Mapping[str, list[float]] | None) -> tuple[str, ...]:
    """The base scores that `score` needs."""
    if score not in SCORE_NAMES:
        raise ValueError(f"unknown open-set score {score!r}; choose one of {', '.join(SCORE_NAMES)}")
    if score != "fused":
        return (score,)
    if not fusion_stats:
        raise ValueError("the fused score needs fusion statistics (open_set_fusion_stats)")
    return tuple(fusion_stats)
