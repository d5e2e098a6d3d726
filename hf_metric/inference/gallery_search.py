"""Searching a gallery: every query against all enrolled rows, or only against the rows of its own group.

The candidate set of a query (the trees enrolled at the photo's address, the intents of one scenario) is a
hard restriction: a query is compared with the gallery rows of its group and nothing else, so a row of
another group can never be returned. Each group is searched exactly with `neighbors.topk_neighbors` (the one
chunked top-k of the package); the whole gallery goes through `ann.IndexedSearch`, which is the same exact
search unless an approximate index is configured and the gallery is large. A query whose group has no gallery
row gets the status `no_candidates` (empty result, never an exception); a query without a group (null) is
compared with the whole gallery and gets `no_group`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STATUS_OK = "ok"
STATUS_NO_CANDIDATES = "no_candidates"
STATUS_NO_GROUP = "no_group"


@dataclass
class GallerySearchResult:
    """The `k` best gallery matches of each query, best first; unused slots (fewer candidates than `k`) hold
    label None, score NaN, index -1, row id None.

    `indices` point into the gallery's rows (matching per row) or its identities (matching per identity, where
    `row_ids` are None).
    """

    labels: np.ndarray
    """(n, k) object array of label names."""
    scores: np.ndarray
    """(n, k) float32 cosine similarities."""
    indices: np.ndarray
    """(n, k) int64."""
    row_ids: np.ndarray
    """(n, k) object array of the enrolled rows' ids."""
    status: np.ndarray
    """(n,) object array: "ok", "no_candidates" or "no_group"."""

    @property
    def top_label(self) -> np.ndarray:
        return self.labels[:, 0] if self.labels.shape[1] else np.full(len(self.labels), None, dtype=object)

    @property
    def top_score(self) -> np.ndarray:
        return self.scores[:, 0] if self.scores.shape[1] else np.full(len(self.scores), np.nan, dtype=np.float32)

    def found(self, row: int) -> int:
        """How many matches row `row` has (the first ones; the rest are padding)."""
        return int((self.indices[row] >= 0).sum())


Search = Callable[..., tuple]


def search_targets(
    queries: np.ndarray,
    targets: np.ndarray,
    target_labels: np.ndarray,
    target_groups: np.ndarray | None,
    target_ids: np.ndarray | None,
    k: int,
    groups: Sequence[object] | None = None,
    search: Search | None = None,
    members: dict[str, np.ndarray] | None = None,
) -> GallerySearchResult:
    """The `k` nearest `targets` (L2-normalised rows) of every query (L2-normalised), restricted to the query's
    group when `groups` is given (module doc); `search` (default `topk_neighbors`) answers the ungrouped ones;
    `members` is `rows_by_group(target_groups)` when the caller keeps it (a gallery searched batch after batch)."""
    from ..model.neighbors import topk_neighbors  # torch is imported when a gallery is searched, not loaded

    search = search or topk_neighbors
    n = len(queries)
    k = max(0, int(k))
    result = GallerySearchResult(
        labels=np.full((n, k), None, dtype=object),
        scores=np.full((n, k), np.nan, dtype=np.float32),
        indices=np.full((n, k), -1, dtype=np.int64),
        row_ids=np.full((n, k), None, dtype=object),
        status=np.full(n, STATUS_OK, dtype=object),
    )
    if n == 0 or k == 0:
        return result

    def fill(rows: np.ndarray, candidates: np.ndarray | None, use: Search) -> None:
        ref = targets if candidates is None else targets[candidates]
        if len(ref) == 0:
            result.status[rows] = STATUS_NO_CANDIDATES
            return
        scores, found = use(queries[rows], ref, min(k, len(ref)), "cos")
        found = found.cpu().numpy() if hasattr(found, "cpu") else np.asarray(found)
        scores = scores.cpu().numpy() if hasattr(scores, "cpu") else np.asarray(scores)
        index = found if candidates is None else candidates[found]
        width = index.shape[1]
        result.indices[rows, :width] = index
        result.scores[rows, :width] = scores
        result.labels[rows, :width] = target_labels[index]
        if target_ids is not None:
            result.row_ids[rows, :width] = target_ids[index]

    if groups is None:
        fill(np.arange(n), None, search)
        return result
    query_groups = np.asarray([None if g is None else str(g) for g in groups], dtype=object)
    if len(query_groups) != n:
        raise ValueError(f"{n} queries but {len(query_groups)} groups")
    ungrouped = np.flatnonzero(is_null(query_groups))
    if len(ungrouped):
        fill(ungrouped, None, search)
        result.status[ungrouped] = STATUS_NO_GROUP
    if members is None:
        members = rows_by_group(target_groups) if target_groups is not None else {}
    grouped = np.flatnonzero(~is_null(query_groups))
    for group, rows in rows_by_group(query_groups[grouped]).items():
        fill(grouped[rows], members.get(group, np.zeros(0, dtype=np.int64)), topk_neighbors)
    return result


def rows_by_group(groups: np.ndarray) -> dict[str, np.ndarray]:
    """Group name -> indices of its rows (ascending), in one sort; null groups are left out."""
    groups = np.asarray(groups, dtype=object)
    present = np.flatnonzero(~is_null(groups))
    if len(present) == 0:
        return {}
    names, inverse = np.unique(groups[present].astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    return {str(name): present[order[bounds[i] : bounds[i + 1]]] for i, name in enumerate(names)}


def is_null(values: np.ndarray) -> np.ndarray:
    """Which entries of an object array are None."""
    return np.fromiter((v is None for v in values), dtype=bool, count=len(values))
