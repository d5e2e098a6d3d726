"""The gallery columns `hf-metric predict --gallery` adds to every row, next to the head's prediction.

- `gallery_label`, `gallery_score`: the best match's identity and its cosine similarity (null when the row's
  group has no gallery rows);
- `gallery_top_labels`, `gallery_top_scores`: the `k` best matches, best first (fewer when fewer candidates);
- `gallery_status`: "ok", "no_candidates" (the row's group has no gallery rows) or "no_group" (within-group
  search, but the row has no group: compared with the whole gallery);
- `is_unknown` (only when the gallery has a calibrated threshold): the best match scores below it, or there is
  no candidate at all. `gallery_label` still names the best match, for review.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import DataError
from .gallery import Gallery
from .gallery_search import GallerySearchResult

MATCH_COLUMNS = ("gallery_label", "gallery_score", "gallery_top_labels", "gallery_top_scores", "gallery_status")
UNKNOWN_COLUMN = "is_unknown"


def unknown_mask(result: GallerySearchResult, threshold: float | None) -> np.ndarray | None:
    """Which queries are unknown identities under `threshold` (None without one); no candidate = unknown."""
    if threshold is None:
        return None
    top = result.top_score
    return np.isnan(top) | (top < threshold)


def match_columns(result: GallerySearchResult, threshold: float | None = None) -> dict[str, pa.Array]:
    """The columns of the module doc for one batch of search results."""
    n = len(result.status)
    widths = [(result.indices[i] >= 0).sum() for i in range(n)]
    top_scores = result.top_score
    columns = {
        "gallery_label": pa.array(result.top_label.tolist(), pa.string()),
        "gallery_score": pa.array([None if np.isnan(s) else float(s) for s in top_scores.tolist()], pa.float32()),
        "gallery_top_labels": pa.array(
            [result.labels[i, :w].tolist() for i, w in enumerate(widths)], pa.list_(pa.string())
        ),
        "gallery_top_scores": pa.array(
            [result.scores[i, :w].tolist() for i, w in enumerate(widths)], pa.list_(pa.float32())
        ),
        "gallery_status": pa.array(result.status.tolist(), pa.string()),
    }
    unknown = unknown_mask(result, threshold)
    if unknown is not None:
        columns[UNKNOWN_COLUMN] = pa.array(unknown, pa.bool_())
    return columns


class GalleryColumns:
    """`predict_file`'s gallery part: searches each batch's embeddings (within the `group` column's group with
    `within_group`) and returns `match_columns`."""

    def __init__(self, gallery: Gallery, top_k: int = 5, within_group: bool = False, group_column: str = "group"):
        self.gallery, self.top_k = gallery, top_k
        self.within_group, self.group_column = within_group, group_column
        self.names = MATCH_COLUMNS + ((UNKNOWN_COLUMN,) if gallery.threshold is not None else ())

    def check_file(self, path: str, columns: list[str]) -> None:
        if self.within_group and self.group_column not in columns:
            raise DataError(
                f"{path}: column '{self.group_column}' is missing (--within-group compares each row with the gallery "
                f"rows of its group; found: {', '.join(columns)})"
            )

    def __call__(self, batch: pa.RecordBatch, outputs: Any) -> dict[str, pa.Array]:
        groups = batch.column(self.group_column).cast(pa.string()).to_pylist() if self.within_group else None
        result = self.gallery.search(outputs.embeddings, self.top_k, groups)
        return match_columns(result, self.gallery.threshold)
