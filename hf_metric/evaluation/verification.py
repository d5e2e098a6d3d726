"""Verification: are two inputs the same identity? Scores of labelled pairs -> ROC AUC, EER, TAR at a FAR.

A pair is accepted as "same" when its score (the cosine of the two embeddings) is >= the threshold. Rates over
genuine pairs (same identity) and impostor pairs (different identities):

- FAR (false accept rate) = accepted impostors / impostors; TAR (true accept rate) = accepted genuine / genuine;
  FRR = 1 - TAR.
- verification_auc: the area under the ROC curve (TAR against FAR), ties counted half (= scikit-learn's
  `roc_auc_score`).
- eer: the rate where FAR = FRR, on the ROC curve's straight segments between its points; eer_threshold: the
  highest threshold whose FAR >= FRR (the ROC point at or just past the crossing).
- tar@far=f: the TAR at the lowest threshold with FAR <= f; threshold@far=f is that threshold, the one to deploy
  for a target false-accept rate (`threshold_at_far`).

Thresholds are always values the scores hold (or the next float above the largest: reject everything), as in
`hf_metric.open_set.calibration`. `sample_pairs` draws the pairs reproducibly from a labelled set when no pairs file is
given: genuine pairs, random impostors, and impostors from the same group (the hard ones: two trees at one
address).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

GENUINE, IMPOSTOR_RANDOM, IMPOSTOR_SAME_GROUP = "genuine", "impostor_random", "impostor_same_group"


def _scores_and_same(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and same must be 1-D of one length, got shapes {s.shape} and {y.shape}")
    if not y.any() or y.all():
        raise ValueError(f"verification needs genuine and impostor pairs, got {int(y.sum())} and {int((~y).sum())}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(s)).sum())} are not")
    return s, y


def lowest_threshold_at_rate(positive_scores: np.ndarray, negative_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold (accept: score >= threshold) that accepts at most `rate` of `negative_scores`.

    Candidates: the distinct values of both score sets and the next float above the largest; lower means more
    positives accepted, so the lowest allowed candidate is the best one. Shared by TAR@FAR and DIR@FPIR."""
    values = np.unique(np.concatenate([positive_scores, negative_scores]).astype(np.float64))
    candidates = np.append(values, np.nextafter(values[-1], np.inf))
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))
    accepted = len(negatives) - np.searchsorted(negatives, candidates, side="left")
    allowed = accepted <= rate * len(negatives) * (1 + 1e-12)  # falls to 0 accepted at the last candidate
    return float(candidates[np.argmax(allowed)])


def threshold_at_far(scores: Any, same: Any, far: float) -> float:
    """The threshold to deploy for a target false-accept rate: the lowest one accepting at most `far` of the
    impostor pairs (so the most genuine pairs at that FAR)."""
    s, y = _scores_and_same(scores, same)
    return lowest_threshold_at_rate(s[y], s[~y], far)


def roc_points(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) at every distinct score, highest threshold first, starting at (0, 0) with the
    threshold just above the largest score (as scikit-learn's `roc_curve(drop_intermediate=False)`, whose first
    threshold is inf)."""
    s, y = _scores_and_same(scores, same)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s) - 1]
    tp = np.cumsum(y_sorted)[last_of_value]
    fp = (last_of_value + 1) - tp
    far = np.r_[0.0, fp / (~y).sum()]
    tar = np.r_[0.0, tp / y.sum()]
    thresholds = np.r_[np.nextafter(s_sorted[0], np.inf), s_sorted[last_of_value]]
    return far, tar, thresholds


def equal_error_rate(far: np.ndarray, tar: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(EER, its threshold) from `roc_points`: where FRR - FAR turns <= 0, interpolated on that segment."""
    diff = (1.0 - tar) - far  # 1 at the first point, -1 at the last
    i = int(np.argmax(diff <= 0))
    step = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(far[i - 1] + step * (far[i] - far[i - 1])), float(thresholds[i])


def verification_metrics(scores: Any, same: Any, fars: tuple[float, ...] = (1e-3, 1e-2)) -> dict[str, float]:
    """verification_auc, eer, eer_threshold, tar@far=f and threshold@far=f for each f, and the pair counts
    ("genuine_pairs", "impostor_pairs"). `scores`: higher = more alike; `same`: the pair is one identity."""
    s, y = _scores_and_same(scores, same)
    far, tar, thresholds = roc_points(s, y)
    eer, eer_threshold = equal_error_rate(far, tar, thresholds)
    out = {"verification_auc": float(np.trapezoid(tar, far)), "eer": eer, "eer_threshold": eer_threshold}
    for f in fars:
        threshold = lowest_threshold_at_rate(s[y], s[~y], f)
        out[f"tar@far={f:g}"] = float((s[y] >= threshold).mean())
        out[f"threshold@far={f:g}"] = threshold
    out.update({"genuine_pairs": float(y.sum()), "impostor_pairs": float((~y).sum())})
    return out


@dataclass
class PairSample:
    """Pairs of rows of one labelled set: row indices `i` < `j`, `same` identity, and how each was drawn
    (`kind`: "genuine", "impostor_random" or "impostor_same_group")."""

    i: np.ndarray
    j: np.ndarray
    same: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.i)

    def select(self, *kinds: str) -> PairSample:
        """The pairs of the given kinds, in order (e.g. genuine + same-group impostors: the hard protocol)."""
        keep = np.isin(self.kind, kinds)
        return PairSample(self.i[keep], self.j[keep], self.same[keep], self.kind[keep])


def _codes(values: Any) -> np.ndarray:
    table: dict[Any, int] = {}
    return np.array([table.setdefault(v, len(table)) for v in np.asarray(values).tolist()], dtype=np.int64)


def _genuine_pairs(labels: np.ndarray, per_label: int | None, rng: np.random.Generator) -> tuple:
    """All pairs of each label's rows, or `per_label` of them drawn without replacement (label by label, in
    order of first appearance), decoded from pair numbers so a large class needs no list of its pairs."""
    rows_i, rows_j = [], []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0, True])
    for start, stop in pairwise(bounds.tolist()):
        rows, m = order[start:stop], stop - start
        total = m * (m - 1) // 2
        if total == 0:
            continue
        picked = np.arange(total) if per_label is None or per_label >= total else rng.choice(total, per_label, False)
        picked = np.sort(picked)
        starts = np.arange(m) * (2 * m - np.arange(m) - 1) // 2  # pair number of (a, a + 1)
        a = np.searchsorted(starts, picked, side="right") - 1
        b = picked - starts[a] + a + 1
        rows_i.append(rows[a])
        rows_j.append(rows[b])
    if not rows_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(rows_i), np.concatenate(rows_j)
    return np.minimum(i, j), np.maximum(i, j)


def _impostor_pairs(labels: np.ndarray, blocks: np.ndarray, count: int, rng: np.random.Generator) -> tuple:
    """`count` distinct pairs of rows in one block (a group; one block for random impostors) with different
    labels, uniform over all such pairs; all of them when there are no more than `count`.

    Sorted by (block, label), row p's partners are its block minus its label's run, so a partner is drawn by
    one offset: no rejection, however skewed the groups."""
    n = len(labels)
    order = np.lexsort((labels, blocks))
    lab, blk = labels[order], blocks[order]
    block_start = np.searchsorted(blk, blk, side="left")
    block_size = np.searchsorted(blk, blk, side="right") - block_start
    run_key = blk.astype(np.int64) * (int(lab.max()) + 1) + lab if n else lab
    run_start = np.searchsorted(run_key, run_key, side="left")
    run_size = np.searchsorted(run_key, run_key, side="right") - run_start
    weight = block_size - run_size
    possible = int(weight.sum()) // 2
    if possible == 0 or count <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    def pair_keys(p: np.ndarray, r: np.ndarray) -> np.ndarray:  # r-th partner of sorted row p, as min * n + max
        before = run_start[p] - block_start[p]
        q = np.where(r < before, block_start[p] + r, block_start[p] + r + run_size[p])
        a, b = order[p], order[q]
        return np.minimum(a, b) * n + np.maximum(a, b)

    if 2 * count >= possible:  # dense: list every pair (each twice), then choose
        p = np.repeat(np.arange(n), weight)
        r = np.arange(len(p)) - np.repeat(np.cumsum(weight) - weight, weight)
        keys = np.unique(pair_keys(p, r))
        if count < len(keys):
            keys = keys[np.sort(rng.choice(len(keys), count, replace=False))]
        return keys // n, keys % n
    keys = np.zeros(0, np.int64)
    while len(keys) < count:  # draws with replacement; the first `count` distinct pairs are a uniform sample
        p = rng.choice(n, size=2 * (count - len(keys)) + 16, p=weight / weight.sum())
        merged = np.concatenate([keys, pair_keys(p, rng.integers(0, weight[p]))])
        _, first = np.unique(merged, return_index=True)
        keys = merged[np.sort(first)]
    keys = keys[:count]
    return keys // n, keys % n


def sample_pairs(
    labels: Any,
    groups: Any = None,
    genuine_per_label: int | None = 100,
    impostors: int = 100_000,
    seed: int = 0,
) -> PairSample:
    """Reproducible verification pairs from a labelled set (the same `seed` and data give the same pairs).

    Genuine: every pair of rows of one label, or `genuine_per_label` of them per label (None: all). Impostors:
    `impostors` random pairs of rows with different labels; with `groups` (one group per row, None for none)
    also `impostors` pairs of different labels within one group. Each kind is capped by the pairs that exist
    and holds no pair twice (a random impostor may also be drawn as a same-group one).
    """
    labels_codes = _codes(labels)
    if len(labels_codes) < 2:
        raise ValueError(f"sample_pairs needs at least 2 rows, got {len(labels_codes)}")
    rng = np.random.default_rng(seed)
    parts = [(*_genuine_pairs(labels_codes, genuine_per_label, rng), GENUINE)]
    parts.append((*_impostor_pairs(labels_codes, np.zeros_like(labels_codes), impostors, rng), IMPOSTOR_RANDOM))
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        if len(groups) != len(labels_codes):
            raise ValueError(f"groups has {len(groups)} rows for {len(labels_codes)} labels")
        blocks = _codes(groups)
        ungrouped = np.array([g is None or g != g for g in groups.tolist()])  # None or NaN: a block of its own
        blocks[ungrouped] = blocks.max() + 1 + np.arange(int(ungrouped.sum()))
        parts.append((*_impostor_pairs(labels_codes, blocks, impostors, rng), IMPOSTOR_SAME_GROUP))
    i = np.concatenate([p[0] for p in parts]).astype(np.int64)
    j = np.concatenate([p[1] for p in parts]).astype(np.int64)
    kind = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in parts])
    return PairSample(i, j, labels_codes[i] == labels_codes[j], kind)


def pair_scores(embeddings: Any, pairs: PairSample, chunk_size: int = 65536) -> np.ndarray:
    """Cosine similarity of each pair's two rows (rows L2-normalised here), in chunks of pairs."""
    e = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms > 0, norms, 1.0)
    out = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), chunk_size):
        a, b = pairs.i[start : start + chunk_size], pairs.j[start : start + chunk_size]
        out[start : start + len(a)] = np.einsum("ij,ij->i", e[a], e[b], dtype=np.float64)
    return out
