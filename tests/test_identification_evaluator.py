"""`IdentificationEvaluator` and its gallery search against naive float64 loops: within-group search, R, the
open-set and verification parts, and the names it registers."""

from __future__ import annotations

import numpy as np
import pytest

from hf_metric.evaluation.identification import IdentificationEvaluator, search_gallery
from hf_metric.evaluation.names import identification_metric_names


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    gallery_labels = rng.choice(["oak", "elm", "ash", "fir", "yew", "box"], 60)
    gallery_groups = np.array(["north" if y in ("oak", "elm", "ash") else "south" for y in gallery_labels], object)
    gallery_groups[gallery_labels == "box"] = "east"
    gallery = rng.normal(size=(60, 6))
    query_labels = np.r_[gallery_labels[:25], ["pine", "pine"]]
    query_groups = np.r_[gallery_groups[:25], ["north", "west"]]  # west: no gallery row at all
    query = np.r_[gallery[:25], rng.normal(size=(2, 6))] + 0.5 * rng.normal(size=(27, 6))
    return query, query_labels, query_groups, gallery, gallery_labels, gallery_groups


def naive_search(query, gallery, rows, k):
    q = query / np.linalg.norm(query)
    g = gallery[rows] / np.linalg.norm(gallery[rows], axis=1, keepdims=True)
    s = g.astype(np.float64) @ q
    order = np.lexsort((np.arange(len(rows)), -s))[:k]
    return rows[order], s[order]


@pytest.mark.parametrize("within", [False, True])
def test_search_matches_naive_and_never_leaves_the_group(within):
    query, qy, qg, gallery, gy, gg = data()
    found = search_gallery(query, gallery, gy, qy, (1, 5), qg if within else None, gg if within else None)
    for i in range(len(qy)):
        rows = np.flatnonzero(gg == qg[i]) if within else np.arange(len(gy))
        assert found.relevant[i] == (gy[rows] == qy[i]).sum()
        assert found.candidates[i] == len(set(gy[rows]))
        want_rows, want_scores = naive_search(query[i], gallery, rows, found.labels.shape[1])
        width = len(want_rows)
        np.testing.assert_array_equal(found.indices[i, :width], want_rows)
        np.testing.assert_allclose(found.scores[i, :width], want_scores, atol=1e-5)
        assert all(v is None for v in found.labels[i, width:])
        if within:
            assert set(gg[found.indices[i, :width]]) <= {qg[i]}
    assert found.labels.shape[1] >= max(found.relevant.max(), 5)


def test_metrics_names_open_set_and_verification():
    query, qy, qg, gallery, gy, gg = data(1)
    evaluator = IdentificationEvaluator(within_group=True, impostors=200)
    got = evaluator(query, qy, gallery, gy, qg, gg)
    assert got["queries_absent_from_gallery"] == 2 and got["identification_queries"] == 25
    assert "dir@fpir=0.01" in got and "dir@fpir=0.1" in got  # pine is the unknown identity
    assert set(identification_metric_names(groups=True)) <= set(got)
    assert set(evaluator.metric_names(groups=True)) == set(identification_metric_names(groups=True))
    by_candidates = evaluator.details["by_candidates"]  # north: 3 trees, south: 2, east: 1 (no decision)
    assert sorted(by_candidates) == [1, 2, 3]
    assert got["precision_at_1_candidates_3-5"] == by_candidates[3][0]
    assert got["precision_at_1_candidates_2"] == by_candidates[2][0]
    plain = IdentificationEvaluator(verification=False)(query, qy, gallery, gy)
    assert "eer" not in plain and "group_precision_at_1_min" not in plain and "precision_at_1" in plain


def test_errors():
    query, qy, _, gallery, gy, _ = data()
    with pytest.raises(ValueError, match="within_group"):
        IdentificationEvaluator(within_group=True)(query, qy, gallery, gy)
    with pytest.raises(ValueError, match="queries and a gallery"):
        IdentificationEvaluator()(query[:0], qy[:0], gallery, gy)
