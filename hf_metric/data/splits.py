"""Which rows train and which validate, and how many of each class train: seeded, per class."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: each class with 2+ rows keeps at least one row on each side.

    A class with a single row stays in train (it cannot be validated without losing it from training).
    """
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(idx) * val_ratio) if len(idx) > 1 else 0
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def resample_per_class(
    indices: np.ndarray,
    labels: np.ndarray,
    upsample: int | None,
    downsample: int | None,
    seed: int,
) -> np.ndarray:
    """Bring every class to at least `upsample` rows (drawing with replacement) and at most `downsample`."""
    if upsample is None and downsample is None:
        return indices
    rng = np.random.default_rng(seed + 1)
    out = []
    for cls in np.unique(labels[indices]):
        idx = indices[labels[indices] == cls]
        if downsample is not None and len(idx) > downsample:
            idx = np.sort(rng.choice(idx, size=downsample, replace=False))
        if upsample is not None and len(idx) < upsample:
            idx = np.concatenate([idx, rng.choice(idx, size=upsample - len(idx), replace=True)])
        out.append(idx)
    return np.sort(np.concatenate(out))
