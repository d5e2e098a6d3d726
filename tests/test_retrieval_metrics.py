"""Identification metrics against pytorch-metric-learning's AccuracyCalculator and naive float64 loops.

Ties are exact by construction: rows of +-1 in 4 dimensions (norm 2, cosines in {-1, -1/2, 0, 1/2, 1}, exact in
float32 and float64), 16 distinct vectors for 60-90 rows, so most neighbours tie and many rows are duplicates.
The ranking is one float64 brute-force search with ties by lower gallery index, handed to both sides (pml via
its `knn_func` hook), so the comparison is of the metric definitions, ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_metric.evaluation.metrics import recall_at_k
from hf_metric.evaluation.retrieval import (
    accuracy_by_candidates,
    cmc_at_k,
    identification_metrics,
    identification_metrics_by_group,
    open_set_identification,
    relevant_counts,
)
from hf_metric.model.neighbors import topk_neighbors

pml_accuracy = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")

PML_NAMES = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "mean_average_precision_at_r": "map_at_r",
    "mean_reciprocal_rank": "mrr",
}

TOLERANCE = {"precision_at_1": 1e-12, "r_precision": 1e-12, "map_at_r": 1e-12, "mrr": 1e-7}
"""pml computes MRR in float32, the others in float64."""


def brute_force(query: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Indices of the k most cosine-similar gallery rows (float64, ties by lower index; self excluded)."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.lexsort((cols, -scores), axis=1)[:, :k]


class BruteForceKNN:
    """pml's `knn_func` protocol: (query, k, reference, ref_includes_query) -> (distances, indices)."""

    def __call__(self, query, k, reference, ref_includes_query=False):
        idx = brute_force(query.double().numpy(), reference.double().numpy(), k, ref_includes_query)
        return torch.zeros(idx.shape, dtype=torch.float64), torch.from_numpy(idx)


def dyadic(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, 4))


def pml_metrics(query, qy, gallery=None, gy=None, k=None, avg_of_avgs=False, knn_func=None) -> dict[str, float]:
    calc = pml_accuracy.AccuracyCalculator(
        include=tuple(PML_NAMES), k=k, avg_of_avgs=avg_of_avgs, device=torch.device("cpu"), knn_func=knn_func
    )
    got = calc.get_accuracy(query, qy, gallery, gy)
    return {PML_NAMES[name]: value for name, value in got.items()}


def ours(query, qy, gallery, gy, k, exclude_self=False, avg_of_avgs=False, ks=(1, 5, 10)):
    ranked = np.asarray(gy)[brute_force(query, gallery, k, exclude_self)]
    return identification_metrics(qy, ranked, relevant_counts(qy, gy, exclude_self), ks, avg_of_avgs=avg_of_avgs)


@pytest.mark.parametrize("avg_of_avgs", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_vs_gallery_matches_pml_with_ties_and_absent_identities(seed, avg_of_avgs):
    rng = np.random.default_rng(seed)
    gallery, query = dyadic(90, seed), dyadic(60, seed + 100)
    gy, qy = rng.integers(0, 6, 90), rng.integers(0, 8, 60)  # labels 6 and 7: absent from the gallery
    k = int(np.bincount(gy).max())
    want = pml_metrics(query, qy, gallery, gy, k, avg_of_avgs, BruteForceKNN())
    got = ours(query, qy, gallery, gy, k, avg_of_avgs=avg_of_avgs, ks=(1, 5))
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=TOLERANCE[name]), name
    assert got["queries_absent_from_gallery"] == (qy >= 6).sum()
    assert got["identification_queries"] == (qy < 6).sum()


@pytest.mark.parametrize("avg_of_avgs", [False, True])
def test_same_source_leave_one_out_matches_pml(avg_of_avgs):
    """The query set is the gallery: R excludes the query's own row and so does the search (pml's
    ref_includes_query); duplicates of the query's embedding stay as neighbours. A label with one row is lone."""
    rng = np.random.default_rng(5)
    emb, labels = dyadic(80, 5), rng.integers(0, 7, 80)
    labels[0] = 99  # a lone identity: R = 0 after leaving itself out
    k = int(np.bincount(labels[labels < 99]).max()) - 1
    want = pml_metrics(emb, labels, k=k, avg_of_avgs=avg_of_avgs, knn_func=BruteForceKNN())
    got = ours(emb, labels, emb, labels, k, exclude_self=True, avg_of_avgs=avg_of_avgs, ks=(1,))
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=TOLERANCE[name]), name
    assert got["queries_absent_from_gallery"] == 1


def test_matches_pml_with_its_own_faiss_search_and_ours():
    """No ties (Gaussian rows): pml's default faiss L2 search on unit rows ranks as our exact cosine search."""
    rng = np.random.default_rng(7)
    gallery, query = rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gy, qy = rng.integers(0, 10, 200), rng.integers(0, 10, 50)
    k = int(np.bincount(gy).max())
    want = pml_metrics(query, qy, gallery, gy, k)
    _, idx = topk_neighbors(query, gallery, k)
    got = identification_metrics(qy, gy[idx.numpy()], relevant_counts(qy, gy), ks=(1,))
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


def naive_cmc(qy, ranked, relevant, ks):
    out = {}
    for k in ks:
        hits = [any(ranked[i][j] == qy[i] for j in range(k)) for i in range(len(qy)) if relevant[i] > 0]
        out[k] = sum(hits) / len(hits)
    return out


@pytest.mark.parametrize("seed", [0, 3])
def test_cmc_matches_naive_loop_and_recall_at_k_is_cmc(seed):
    rng = np.random.default_rng(seed)
    gallery, query = dyadic(70, seed), dyadic(40, seed + 1)
    gy, qy = rng.integers(0, 5, 70), rng.integers(0, 5, 40)
    ranked = gy[brute_force(query, gallery, 20)]
    got = identification_metrics(qy, ranked, relevant_counts(qy, gy), ks=(1, 3, 10))
    want = naive_cmc(qy, ranked, relevant_counts(qy, gy), (1, 3, 10))
    assert all(got[f"cmc@{k}"] == pytest.approx(v) for k, v in want.items())
    # Every identity present: recall@K (searched by hf_metric's own exact search) is the same number.
    recall = recall_at_k(query, qy, gallery, gy, ks=(1, 3, 10))
    assert all(recall[k] == pytest.approx(got[f"cmc@{k}"]) for k in (1, 3, 10))
    assert cmc_at_k(qy, ranked, (1, 3, 10)) == recall


def test_string_labels_padding_and_small_gallery():
    qy = np.array(["oak", "elm", "ash", "fir"])
    ranked = np.array([["oak", "elm", None], ["oak", "elm", None], ["oak", "elm", None], ["oak", None, None]], object)
    got = identification_metrics(qy, ranked, [1, 1, 1, 0], ks=(1, 2))
    # fir is absent (R = 0); ash is present in the gallery but was not retrieved (a miss at every rank).
    assert got["precision_at_1"] == pytest.approx(1 / 3)
    assert got["cmc@2"] == pytest.approx(2 / 3)
    assert got["mrr"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert got["map_at_r"] == pytest.approx(1 / 3) and got["r_precision"] == pytest.approx(1 / 3)
    assert got["queries_absent_from_gallery"] == 1


def test_mixed_label_types_never_match_padding():
    got = identification_metrics([1, 2], np.array([[1, None], [None, 2]], object), [1, 1], ks=(2,))
    assert got["precision_at_1"] == 0.5 and got["cmc@2"] == 1.0 and got["mrr"] == 0.75


def test_errors_and_no_known_identity():
    with pytest.raises(ValueError, match="no queries"):
        identification_metrics([], np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="need k = max"):
        identification_metrics([0, 1], [[0, 1], [1, 0]], [3, 1], ks=(1,))
    with pytest.raises(ValueError, match="need k = max"):
        identification_metrics([0, 1], [[0, 1], [1, 0]], [1, 1], ks=(1, 5))
    with pytest.raises(ValueError, match="ranked_labels must be"):
        identification_metrics([0, 1], [[0, 1]], [1, 1], ks=(1,))
    got = identification_metrics([5, 6], [[0], [1]], [0, 0], ks=(1,))
    assert np.isnan(got["precision_at_1"]) and got["identification_queries"] == 0


def test_by_group_and_by_number_of_candidates():
    rng = np.random.default_rng(11)
    gallery, query = dyadic(60, 11), dyadic(30, 12)
    gy, qy = rng.integers(0, 6, 60), rng.integers(0, 7, 30)
    groups = np.where(qy % 2 == 0, "north", "south")
    ranked = gy[brute_force(query, gallery, 20)]
    relevant = relevant_counts(qy, gy)
    by_group = identification_metrics_by_group(qy, ranked, relevant, groups, ks=(1,))
    assert list(by_group) == ["north", "south"]
    for g in ("north", "south"):
        rows = [i for i in range(30) if groups[i] == g and relevant[i] > 0]
        assert by_group[g]["precision_at_1"] == pytest.approx(np.mean([ranked[i, 0] == qy[i] for i in rows]))
    candidates = (qy % 3) + 1
    got = accuracy_by_candidates(qy, ranked, relevant, candidates)
    for c in (1, 2, 3):
        rows = [i for i in range(30) if candidates[i] == c and relevant[i] > 0]
        assert got[c] == (pytest.approx(np.mean([ranked[i, 0] == qy[i] for i in rows])), len(rows))
    bucketed = accuracy_by_candidates(qy, ranked, relevant, candidates * 3, buckets=True)
    assert (
        list(bucketed) == ["3-5", "6-10"]
        and bucketed["3-5"] == got[1]
        and bucketed["6-10"][1] == (got[2][1] + got[3][1])
    )


def naive_dir(known, correct, unknown, f):
    candidates = [*sorted(set(known) | set(unknown)), np.inf]
    for t in candidates:  # the lowest threshold that keeps FPIR <= f
        if np.mean([u >= t for u in unknown]) <= f:
            return np.mean([c and s >= t for s, c in zip(known, correct, strict=True)]), t


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_open_set_identification_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    known = np.round(rng.normal(0.6, 0.2, 300), 2)  # rounded: many ties
    unknown = np.round(rng.normal(0.3, 0.2, 250), 2)
    correct = rng.random(300) < 0.8
    got = open_set_identification(known, correct, unknown, fpirs=(0.01, 0.1, 0.5))
    for f in (0.01, 0.1, 0.5):
        dir_, t = naive_dir(known.tolist(), correct.tolist(), unknown.tolist(), f)
        assert got[f"dir@fpir={f:g}"] == pytest.approx(dir_)
        if np.isfinite(t):
            assert got[f"threshold@fpir={f:g}"] == t
        else:
            assert got[f"threshold@fpir={f:g}"] > max(known.max(), unknown.max())
    with pytest.raises(ValueError, match="known and unknown"):
        open_set_identification(known, correct, [])
