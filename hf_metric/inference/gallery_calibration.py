"""The unknown-identity threshold of a gallery, chosen on validation queries of known and unknown identities.

A query is "unknown" when its best match scores below the threshold. The threshold is chosen by the package's
one open-set calibration (`hf_metric.open_set.calibration.calibrate`, the same criteria and candidate
thresholds as the model's out-of-scope rule), with the gallery match as the classifier: a query whose identity
is enrolled (in its group, for within-group search) is in scope and "correct" when its best match has its
label; a query of an identity absent from the gallery is out of scope. The default criterion is the best
open-set accuracy (right identity, or "unknown" for an unenrolled one); `fpr` with a target keeps the share of
unknown queries accepted at most that (a false-positive identification rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from ..model.open_set_scores import OUT_OF_SCOPE_ID
from ..open_set.calibration import calibrate
from .gallery import Gallery
from .gallery_search import candidate_counts

SCORE_NAME = "gallery_score"
NO_MATCH_SCORE = float(np.finfo(np.float32).min)
"""The score of a query with no candidate at all: below every threshold, so it is always unknown."""


def enrolled(gallery: Gallery, labels: np.ndarray, groups: Sequence[Any] | None) -> np.ndarray:
    """Whether each query's identity is among the targets its search sees (in its own group when `groups` is
    given; a query without a group sees them all: `gallery_search.candidate_sets`)."""
    _, target_labels, target_groups, _ = gallery.targets()
    return candidate_counts(labels, target_labels, groups, target_groups)[0] > 0


def calibrate_gallery(
    gallery: Gallery,
    embeddings: np.ndarray,
    labels: Sequence[Any],
    groups: Sequence[Any] | None = None,
    criterion: str | None = None,
    target: float | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Choose the threshold on these queries (module doc), store it in `gallery.calibration` and return it."""
    labels = np.asarray([str(x) for x in labels], dtype=object)
    result = gallery.search(embeddings, 1, groups)
    known = enrolled(gallery, labels, groups)
    if known.all() or not known.any():
        what = "unknown" if known.all() else "enrolled"
        raise DataError(
            f"{source or 'calibration file'}: no query of an {what} identity; calibrating the unknown-identity "
            "threshold needs queries of identities in the gallery and of identities not in it"
        )
    scores = np.where(np.isnan(result.top_score), NO_MATCH_SCORE, result.top_score).astype(np.float32)
    # calibrate() compares the argmax of `logits` with `labels`: every query "predicts" 0, and its label is 0
    # when the match is right, 1 when wrong, out of scope when the identity is not enrolled
    coded = np.where(known, np.where(result.top_label == labels, 0, 1), OUT_OF_SCOPE_ID)
    logits = np.zeros((len(labels), 2), dtype=np.float32)
    logits[:, 0] = 1.0
    try:
        chosen = calibrate({SCORE_NAME: scores}, logits, coded, SCORE_NAME, criterion, target)
    except ValueError as err:
        raise DataError(f"{source or 'calibration file'}: {err}") from None
    gallery.calibration = {
        "threshold": float(chosen.threshold),
        "criterion": chosen.criterion,
        "target": target,
        "within_group": groups is not None,
        "match": gallery.match,
        "source": source,
        "queries": len(labels),
        "unknown_queries": int((~known).sum()),
        "metrics": {k: (None if np.isnan(v) else float(v)) for k, v in chosen.metrics.items()},
    }
    return gallery.calibration
