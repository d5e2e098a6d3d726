"""Searching a gallery: every query against all enrolled rows, or only against the rows of its own group.

The one candidate-set search of the package: `Gallery.search` (`hf-metric predict --gallery`, the kNN pipeline's
reference) and the `IdentificationEvaluator` (validation, `hf-metric evaluate --gallery`) both go through
`search_targets`, so the restriction, the null-group rule, the tie order and the padding are the same in both.

The candidate set of a query (the trees enrolled at the photo's address, the intents of one scenario) is a
hard restriction: a query is compared with the gallery rows of its group and nothing else, so a row of
another group can never be returned (`candidate_sets`). Groups are compared by name (`as_names`: the string
of each value; None and NaN are a null group). Each group is searched exactly with `neighbors.topk_neighbors`
(the one chunked top-k of the package: ties go to the lower gallery index); the whole gallery goes through the
caller's `search` (`ann.IndexedSearch` for a gallery, the sharded search in validation), the same exact search
unless an approximate index is configured and the gallery is large. A query whose group has no gallery row gets
the status `no_candidates` (empty result, never an exception); a query without a group (null) is compared with
the whole gallery and gets `no_group`. A gallery row without a group is a candidate of no group, only of the
queries compared with the whole gallery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluation.retrieval import relevant_counts

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
    """(n, k) object array of the enrolled rows' ids (a read-only view of None when the targets have none)."""
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


def candidate_sets(
    n: int,
    groups: Sequence[object] | None,
    target_groups: Sequence[object] | None = None,
    members: dict[str, np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None, str]]:
    """The rule of the module doc, block by block: (query rows, target rows or None for every target, status)
    of `n` queries. Without `groups` one block of all queries and all targets; else the null-group queries
    against every target (`no_group`), and each group's queries against its targets (`members`, default
    `rows_by_group(target_groups)`; none: `no_candidates`). Query and target rows are ascending."""
    if groups is None:
        yield np.arange(n), None, STATUS_OK
        return
    groups = as_names(groups)
    if members is None:
        members = rows_by_group(target_groups) if target_groups is not None else {}
    if len(groups) != n:
        raise ValueError(f"{n} queries but {len(groups)} groups")
    null = is_null(groups)
    if null.any():
        yield np.flatnonzero(null), None, STATUS_NO_GROUP
    grouped = np.flatnonzero(~null)
    empty = np.zeros(0, dtype=np.int64)
    for group, rows in rows_by_group(groups[grouped]).items():
        candidates = members.get(group, empty)
        yield grouped[rows], candidates, STATUS_OK if len(candidates) else STATUS_NO_CANDIDATES


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
    """The `k` nearest `targets` of every query (cosine; rows need not be normalised), restricted to the query's
    group when `groups` is given (module doc); `search` (default `topk_neighbors`) answers the queries compared
    with every target, `topk_neighbors` each group; `members` is `rows_by_group(target_groups)` when the caller
    keeps it (a gallery searched batch after batch)."""
    from ..model.neighbors import topk_neighbors  # torch is imported when a gallery is searched, not loaded

    search = search or topk_neighbors
    n = len(queries)
    k = max(0, int(k))
    result = GallerySearchResult(
        labels=np.full((n, k), None, dtype=object),
        scores=np.full((n, k), np.nan, dtype=np.float32),
        indices=np.full((n, k), -1, dtype=np.int64),
        row_ids=np.full((n, k), None, dtype=object)
        if target_ids is not None
        else np.broadcast_to(np.array(None, dtype=object), (n, k)),
        status=np.full(n, STATUS_OK, dtype=object),
    )
    for rows, candidates, status in candidate_sets(n, groups, target_groups, members):
        # all queries / all targets are used as they are: no copy of a large gallery (or of its index's key)
        ref, use = (targets, search) if candidates is None else (targets[candidates], topk_neighbors)
        result.status[rows] = STATUS_NO_CANDIDATES if len(ref) == 0 and status == STATUS_OK else status
        if k == 0 or len(ref) == 0 or len(rows) == 0:
            continue
        scores, found = use(queries if len(rows) == n else queries[rows], ref, min(k, len(ref)), "cos")
        found = found.cpu().numpy() if hasattr(found, "cpu") else np.asarray(found)
        scores = scores.cpu().numpy() if hasattr(scores, "cpu") else np.asarray(scores)
        index = found if candidates is None else candidates[found]
        width = index.shape[1]
        result.indices[rows, :width] = index
        result.scores[rows, :width] = scores
        result.labels[rows, :width] = target_labels[index]
        if target_ids is not None:
            result.row_ids[rows, :width] = target_ids[index]
    return result


def candidate_counts(
    labels: np.ndarray,
    target_labels: np.ndarray,
    groups: Sequence[object] | None = None,
    target_groups: np.ndarray | None = None,
    members: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, over the targets `search_targets` compares it with (the same arguments): R, the targets with
    its label (0: its identity is not enrolled there, an unknown), and the distinct labels among them."""
    relevant = np.zeros(len(labels), dtype=np.int64)
    distinct = np.zeros(len(labels), dtype=np.int64)
    for rows, candidates, _ in candidate_sets(len(labels), groups, target_groups, members):
        seen = target_labels if candidates is None else target_labels[candidates]
        relevant[rows] = relevant_counts(labels[rows], seen)
        distinct[rows] = len(set(seen.tolist()))
    return relevant, distinct


def rows_by_group(groups: Sequence[Any]) -> dict[str, np.ndarray]:
    """Group name (`as_names`) -> indices of its rows (ascending), in one sort; null groups are left out."""
    groups = as_names(groups)
    present = np.flatnonzero(~is_null(groups))
    if len(present) == 0:
        return {}
    names, inverse = np.unique(groups[present].astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    return {str(name): present[order[bounds[i] : bounds[i + 1]]] for i, name in enumerate(names)}


def as_names(values: Sequence[Any]) -> np.ndarray:
    """An object array of the string of each value, None for a null one (None or NaN, a missing value read
    through pandas): what groups are compared by, so that 7 and "7" are one group and no null is a group."""
    values = values if isinstance(values, np.ndarray) else list(values)
    null = is_null(values)
    out = np.empty(len(null), dtype=object)
    out[:] = [None if gone else str(v) for v, gone in zip(values, null, strict=True)]
    return out


def is_null(values: Sequence[Any]) -> np.ndarray:
    """Which entries are null: None, or a float NaN."""
    return np.fromiter(
        (v is None or (isinstance(v, float | np.floating) and bool(np.isnan(v))) for v in values),
        dtype=bool,
        count=len(values),
    )
