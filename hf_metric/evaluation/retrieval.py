"""Identification metrics of queries searched against a gallery: plain functions on ranked labels.

A search (exact, approximate, within a group: the caller's business) gives each query the labels of its k
nearest gallery rows, best first; these functions turn them into the numbers of the retrieval literature.
Definitions follow pytorch-metric-learning's `AccuracyCalculator` (checked against it in the tests), with R =
the number of gallery rows sharing the query's label:

- precision_at_1: the nearest row has the query's label.
- cmc@K (cumulative match characteristic; the same number as recall@K): a row of the query's label is among
  the first K. `recall_at_k` in `metrics` is this function on a whole query set.
- r_precision: the share of the first R rows with the query's label.
- map_at_r: mean over the first R positions that hold the query's label of the precision at that position,
  divided by R (MAP@R of Musgrave et al., "A Metric Learning Reality Check", 2020).
- mrr: 1 / the rank of the first row with the query's label, 0 when none of the k rows has it.

Queries with R = 0 (an identity absent from the gallery) cannot be identified, only rejected: they are left
out here and scored by `open_set_identification` instead. MAP@R and R-precision look at the first R rows, so
callers search k = max(max R, max ks) rows and pad short rows (a small gallery or group) with None; fewer
columns than that is an error, not a silently wrong number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from .groups import CANDIDATE_BUCKETS
from .verification import lowest_threshold_at_rate

PAD = None
"""What callers put in `ranked_labels` where a query had fewer than k gallery rows; it never equals a label."""


def _labels(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _ks(ks: int | Iterable[int]) -> tuple[int, ...]:
    ks = (int(ks),) if isinstance(ks, int | np.integer) else tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _codes(values: np.ndarray, table: dict[Any, int]) -> np.ndarray:
    """Integer code of each value (a new code for an unseen one); padding (None) is -1."""
    flat = values.ravel().tolist()
    return np.array([-1 if v is PAD else table.setdefault(v, len(table)) for v in flat], np.int64).reshape(values.shape)


def hit_matrix(query_labels: Any, ranked_labels: Any) -> np.ndarray:
    """(n, k) booleans: ranked gallery label j of query i is the query's label (padding never is). Labels may be
    ints, strings or a mix (an object array padded with None)."""
    query_labels = _labels(query_labels, "query_labels")
    ranked = np.asarray(ranked_labels)
    if ranked.ndim != 2 or len(ranked) != len(query_labels):
        raise ValueError(f"ranked_labels must be ({len(query_labels)}, k), got shape {ranked.shape}")
    if ranked.dtype == object or query_labels.dtype == object or ranked.dtype.kind != query_labels.dtype.kind:
        table: dict[Any, int] = {}
        return _codes(ranked, table) == _codes(query_labels, table)[:, None]
    return ranked == query_labels[:, None]


def first_hit_ranks(hits: np.ndarray) -> np.ndarray:
    """0-based position of each row's first hit; a large sentinel for rows without one."""
    hits = np.asarray(hits, dtype=bool)
    if hits.shape[1] == 0:
        return np.full(len(hits), np.iinfo(np.int64).max)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)


def cmc_from_hits(hits: np.ndarray, ks: int | Iterable[int]) -> dict[int, float]:
    """CMC@K (= recall@K) for each K: the share of rows with a hit among their first K columns (rows with fewer
    columns use what they have); 0.0 for no rows. The one implementation behind `recall_at_k` and `cmc@K`."""
    ks = _ks(ks)
    if not len(hits):
        return dict.fromkeys(ks, 0.0)
    first = first_hit_ranks(hits)
    return {k: float((first < k).mean()) for k in ks}


def cmc_at_k(query_labels: Any, ranked_labels: Any, ks: int | Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """CMC@K over every query given (a query whose label is nowhere in its row is a miss at every K)."""
    return cmc_from_hits(hit_matrix(query_labels, ranked_labels), ks)


def _per_query(hits: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query precision@1, R-precision, AP@R and reciprocal rank (rows all have R >= 1)."""
    n, k = hits.shape
    within_r = np.arange(k)[None, :] < relevant[:, None]
    hits_r = hits & within_r
    cumulative = np.cumsum(hits_r, axis=1)
    precision_at_i = cumulative / np.arange(1, k + 1)[None, :]
    first = first_hit_ranks(hits)
    found = first < k
    reciprocal = np.zeros(n)
    reciprocal[found] = 1.0 / (first[found] + 1)
    return {
        "precision_at_1": hits[:, 0].astype(float) if k else np.zeros(n),
        "r_precision": hits_r.sum(axis=1) / relevant,
        "map_at_r": (precision_at_i * hits_r).sum(axis=1) / relevant,
        "mrr": reciprocal,
    }


def _average(values: np.ndarray, labels: np.ndarray, avg_of_avgs: bool) -> float:
    if not avg_of_avgs:
        return float(values.mean())
    codes = _codes(labels, {})
    return float((np.bincount(codes, weights=values) / np.bincount(codes)).mean())


def identification_metrics(
    query_labels: Any,
    ranked_labels: Any,
    relevant_counts: Any,
    ks: int | Iterable[int] = (1, 5, 10),
    *,
    avg_of_avgs: bool = False,
) -> dict[str, float]:
    """precision_at_1, cmc@K for each K, r_precision, map_at_r and mrr of the queries whose identity is in the
    gallery (R >= 1), plus "identification_queries" (how many) and "queries_absent_from_gallery" (R = 0, left
    out). `ranked_labels` (n, k) with k >= max(max R, max ks), padded with None; `avg_of_avgs`: average per
    label first, then over labels (pytorch-metric-learning's option; rare identities weigh as much as common
    ones). Every metric is NaN when no query's identity is in the gallery.
    """
    ks = _ks(ks)
    query_labels = _labels(query_labels, "query_labels")
    relevant = _labels(relevant_counts, "relevant_counts").astype(np.int64)
    if not len(query_labels):
        raise ValueError("identification_metrics: no queries")
    if len(relevant) != len(query_labels):
        raise ValueError(f"relevant_counts has {len(relevant)} rows for {len(query_labels)} queries")
    if (relevant < 0).any():
        raise ValueError("relevant_counts must be >= 0")
    hits = hit_matrix(query_labels, ranked_labels)
    needed = max(int(relevant.max()), max(ks))
    if hits.shape[1] < needed:
        raise ValueError(
            f"ranked_labels has {hits.shape[1]} columns; MAP@R and cmc@{max(ks)} need k = max(max R, max ks) = "
            f"{needed} (pad queries with fewer gallery rows with None)"
        )
    known = relevant > 0
    out: dict[str, float] = {"identification_queries": float(known.sum())}
    out["queries_absent_from_gallery"] = float((~known).sum())
    names = ("precision_at_1", *(f"cmc@{k}" for k in ks), "r_precision", "map_at_r", "mrr")
    if not known.any():
        return {**dict.fromkeys(names, float("nan")), **out}
    hits, relevant, labels = hits[known], relevant[known], query_labels[known]
    per_query = _per_query(hits, relevant)
    first = first_hit_ranks(hits)
    for k in ks:
        per_query[f"cmc@{k}"] = (first < k).astype(float)
    return {**{name: _average(per_query[name], labels, avg_of_avgs) for name in names}, **out}


def identification_metrics_by_group(
    query_labels: Any,
    ranked_labels: Any,
    relevant_counts: Any,
    groups: Any,
    ks: int | Iterable[int] = (1, 5, 10),
) -> dict[Hashable, dict[str, float]]:
    """`identification_metrics` of each group's queries (`groups`: one group per query), sorted by group. The
    search itself decides whether a query was compared with its group only (within-group identification) or
    with the whole gallery; R must count the same gallery rows the search saw."""
    query_labels, groups = _labels(query_labels, "query_labels"), _labels(groups, "groups")
    if len(groups) != len(query_labels):
        raise ValueError(f"groups has {len(groups)} rows for {len(query_labels)} queries")
    ranked, relevant = np.asarray(ranked_labels, dtype=object), np.asarray(relevant_counts)
    out: dict[Hashable, dict[str, float]] = {}
    for group in sorted(set(groups.tolist()), key=str):
        rows = np.array([g == group for g in groups.tolist()])
        out[group] = identification_metrics(query_labels[rows], ranked[rows], relevant[rows], ks)
    return out


def _bucket(n: int) -> str | None:
    for low, high, name in CANDIDATE_BUCKETS:
        if n >= low and (high is None or n <= high):
            return name
    return None


def accuracy_by_candidates(
    query_labels: Any,
    ranked_labels: Any,
    relevant_counts: Any,
    candidates: Any,
    buckets: bool = False,
) -> dict[Any, tuple[float, int]]:
    """Top-1 accuracy by the number of candidate identities each query was compared with (`candidates`, e.g.
    the distinct labels of its group in the gallery): n_candidates -> (accuracy, rows), ascending. Queries
    absent from the gallery (R = 0) are left out, as in `identification_metrics`. `buckets`: keyed by the
    group analysis's `CANDIDATE_BUCKETS` ("2", "3-5", "6-10", "11+"; one candidate is no decision) instead.
    The tree-at-an-address question: does identification fall with the number of trees at the address?"""
    hits = hit_matrix(query_labels, ranked_labels)
    relevant = np.asarray(relevant_counts, dtype=np.int64)
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) != len(hits) or len(relevant) != len(hits):
        raise ValueError(
            f"candidates and relevant_counts need {len(hits)} rows, got {len(candidates)}, {len(relevant)}"
        )
    correct = hits[:, 0] if hits.shape[1] else np.zeros(len(hits), bool)
    keys: Sequence[Any] = [_bucket(int(c)) for c in candidates] if buckets else candidates.tolist()
    collected: dict[Any, list[bool]] = {}
    for key, ok, r in zip(keys, correct.tolist(), relevant.tolist(), strict=True):
        if key is not None and r > 0:
            collected.setdefault(key, []).append(ok)
    order = [name for _, _, name in CANDIDATE_BUCKETS] if buckets else sorted(collected)
    return {key: (float(np.mean(collected[key])), len(collected[key])) for key in order if key in collected}


def open_set_identification(
    known_top1_scores: Any,
    known_top1_correct: Any,
    unknown_top1_scores: Any,
    fpirs: Iterable[float] = (0.01, 0.1),
) -> dict[str, float]:
    """Detection-and-identification rate at a false-positive identification rate (the open-set protocol of
    face identification, e.g. NIST FRVT): for each target FPIR f, the threshold T is the lowest one at which
    at most f of the unknown queries (identities absent from the gallery) have a top-1 score >= T, and
    DIR = the share of known queries whose top-1 match is right AND scores >= T. Keys "dir@fpir=<f>" and
    "threshold@fpir=<f>" (the threshold to deploy)."""
    known = np.asarray(known_top1_scores, dtype=np.float64)
    correct = np.asarray(known_top1_correct, dtype=bool)
    unknown = np.asarray(unknown_top1_scores, dtype=np.float64)
    if not len(known) or not len(unknown):
        raise ValueError(
            f"open_set_identification needs known and unknown queries, got {len(known)} and {len(unknown)}"
        )
    if len(correct) != len(known):
        raise ValueError(f"known_top1_correct has {len(correct)} rows for {len(known)} known scores")
    out: dict[str, float] = {}
    for f in fpirs:
        threshold = lowest_threshold_at_rate(known, unknown, float(f))
        out[f"dir@fpir={f:g}"] = float((correct & (known >= threshold)).mean())
        out[f"threshold@fpir={f:g}"] = threshold
    return out


def relevant_counts(query_labels: Any, gallery_labels: Any, exclude_self: bool = False) -> np.ndarray:
    """R per query: the gallery rows sharing its label (minus its own row when the query set is the gallery)."""
    query_labels, gallery_labels = _labels(query_labels, "query_labels"), _labels(gallery_labels, "gallery_labels")
    counts = Counter(gallery_labels.tolist())
    out = np.array([counts.get(y, 0) for y in query_labels.tolist()], dtype=np.int64)
    return np.maximum(out - 1, 0) if exclude_self else out
