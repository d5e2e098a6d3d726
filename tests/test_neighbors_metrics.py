"""Blocked neighbour search and the retrieval metrics, against naive float64 NumPy references.

The references build the full distance matrix and sort it with `np.lexsort` on (score, index), so they share
no code with `hf_metric.model.neighbors`. Exact ties are made with "dyadic" data (entries +-1, or duplicated rows of
it): every norm, product and sum is then exact in float32 and float64 alike, so both sides see the same ties.
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from threadpoolctl import threadpool_info

from hf_metric.evaluation.metrics import (
    bank_statistics,
    is_collapsed,
    knn_classify,
    knn_metrics,
    knn_predict,
    prediction_diversity,
    queries_without_bank_label,
    recall_at_k,
)
from hf_metric.model.neighbors import _padded, balanced_spans, topk_neighbors
from hf_metric.model.topk_merge import GROUP, _block_topk, _key_indices, _key_values, _keys, _merge_block

# --- naive references (float64, full matrices) -------------------------------------------------------------


def naive_scores(query: np.ndarray, ref: np.ndarray, distance: str) -> np.ndarray:
    """Higher is nearer: cosine similarity, or minus the squared Euclidean distance (by explicit differences)."""
    q, r = query.astype(np.float64), ref.astype(np.float64)
    if distance == "cos":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        return q @ r.T
    return -((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=2)


def naive_topk(query, ref, k, distance, exclude_self=False):
    """(scores as returned by topk_neighbors, indices), ties by lower index, from a full lexsort."""
    s = naive_scores(query, ref, distance)
    available = ref.shape[0] - int(exclude_self)
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    cols = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    order = np.lexsort((cols, -s), axis=1)[:, : min(k, available)]
    top = np.take_along_axis(s, order, axis=1)
    return (top if distance == "cos" else np.sqrt(-top)), order


def naive_recall(query, qy, ref, ry, ks, distance, exclude_self=False):
    _, idx = naive_topk(query, ref, max(ks), distance, exclude_self)
    return {k: float(np.mean([qy[i] in set(ry[idx[i, :k]]) for i in range(len(qy))])) for k in ks}


def naive_knn(query, ref, ry, k, distance, exclude_self=False):
    """Weighted vote, one query at a time with a dict; ties: the tied class met first in neighbour order."""
    scores, idx = naive_topk(query, ref, k, distance, exclude_self)
    preds = []
    for i in range(len(query)):
        totals: dict = {}
        for s, j in zip(scores[i], idx[i], strict=True):
            w = (1 + s) / 2 if distance == "cos" else 1 / (s + 1e-6)
            totals[ry[j]] = totals.get(ry[j], 0.0) + w
        best = max(totals.values())
        preds.append(next(ry[j] for j in idx[i] if totals[ry[j]] == best))
    return np.array(preds)


def dyadic(rng, n, dim=4):
    """Rows of +-1: few distinct rows, so many exactly tied scores, computed exactly in float32."""
    return rng.choice([-1.0, 1.0], size=(n, dim)).astype(np.float32)


def make_data(kind: str, seed: int, n_query: int = 45, n_ref: int = 70, dim: int = 12):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.normal(size=(n_query, dim)).astype(np.float32), rng.normal(size=(n_ref, dim)).astype(np.float32)
    if kind == "dyadic":
        return dyadic(rng, n_query), dyadic(rng, n_ref)
    # "duplicates": a bank with many exact copies of a few rows (tied at every rank, not only by chance)
    base = dyadic(rng, 9, dim=16)  # a power-of-4 width keeps the norms (4) and so the cosines exact
    return dyadic(rng, n_query, dim=16), base[rng.integers(0, len(base), size=n_ref)]


CHUNKS = [(None, None), (7, 5), (16, 64), (1, 17), (5, 2)]


# --- topk_neighbors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["cos", "l2"])
@pytest.mark.parametrize("kind", ["gauss", "dyadic", "duplicates"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_topk_matches_naive_for_every_chunking(distance, kind, exclude_self):
    query, ref = make_data(kind, seed=len(kind))
    if exclude_self:
        query = ref
    for k in (1, 4, 13, 500):  # 500 > N_ref: everything that exists, nearest first
        want_s, want_i = naive_topk(query, ref, k, distance, exclude_self)
        for chunk, ref_chunk in CHUNKS:
            s, i = topk_neighbors(query, ref, k, distance, chunk, exclude_self, ref_chunk)
            assert i.dtype == torch.int64 and s.dtype == torch.float32
            np.testing.assert_array_equal(i.numpy(), want_i, err_msg=f"k={k} chunks={chunk},{ref_chunk}")
            np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_small_cosine_search_is_one_product_with_the_blocked_answer(monkeypatch, exclude_self):
    """A search small enough (`SMALL_SEARCH_SCORES`) is one product and one top k; above the limit the blocked
    search runs; both give the naive answer, ties included."""
    from hf_metric.model import neighbors

    calls = []
    whole = neighbors._BlockScorer.whole
    monkeypatch.setattr(neighbors._BlockScorer, "whole", lambda self, k: calls.append(k) or whole(self, k))
    query, ref = make_data("duplicates", seed=3, n_query=40, n_ref=1500)
    query = ref if exclude_self else query
    want_s, want_i = naive_topk(query, ref, 10, "cos", exclude_self)
    answers = []
    for limit in (neighbors.SMALL_SEARCH_SCORES, 0):
        monkeypatch.setattr(neighbors, "SMALL_SEARCH_SCORES", limit)
        s, i = topk_neighbors(query, ref, 10, "cos", exclude_self=exclude_self)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-5, atol=1e-5)
        answers.append(len(calls))
    assert answers == [1, 1]  # the one product under the limit, the blocks above it


@pytest.mark.parametrize("distance", ["cos", "l2"])
@pytest.mark.parametrize("kind", ["gauss", "dyadic", "duplicates"])
def test_topk_matches_naive_on_wide_blocks(distance, kind):
    """Blocks wide enough for the group pre-selection of `_block_topk` (and its tie fallback)."""
    query, ref = make_data(kind, seed=7, n_query=40, n_ref=1500)
    for k in (1, 5, 10, 40):
        want_s, want_i = naive_topk(query, ref, k, distance)
        for chunk, ref_chunk in ((None, None), (16, 700)):
            s, i = topk_neighbors(query, ref, k, distance, chunk, ref_chunk_size=ref_chunk)
            np.testing.assert_array_equal(i.numpy(), want_i, err_msg=f"k={k} chunks={chunk},{ref_chunk}")
            np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-5, atol=1e-5)


def test_block_topk_resolves_ties_inside_and_across_groups():
    """Crafted score blocks: the k-th and (k+1)-th best are equal, in one column group or in two."""
    rng = np.random.default_rng(0)
    rows, width, k = 300, 1024, 3
    n_groups = width // GROUP
    block = rng.random((rows, width)).astype(np.float32)
    for row in range(rows):
        cols = rng.choice(width, size=4, replace=False)
        if row % 2:  # both 8s in the group of cols[2]
            group, m = cols[2] % n_groups, rng.choice(GROUP, size=2, replace=False)
            cols[2:] = group + n_groups * m
            if len(set(cols)) < 4:
                cols[:2] = [c for c in range(width) if c not in cols[2:]][:2]
        block[row, cols] = [10.0, 9.0, 8.0, 8.0]
    values, indices = _block_topk(torch.from_numpy(block), k)
    order = np.lexsort((np.broadcast_to(np.arange(width), block.shape), -block), axis=1)[:, :k]
    np.testing.assert_array_equal(indices.numpy(), order)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(block, order, axis=1))


def test_keys_order_by_score_then_lower_index():
    """The int64 keys of the running top k sort exactly like (score descending, index ascending)."""
    rng = np.random.default_rng(5)
    specials = np.array([-np.inf, -2.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 3.0, np.inf], dtype=np.float32)
    values = np.concatenate([rng.choice(specials, size=300), rng.normal(size=100).astype(np.float32)])
    indices = rng.permutation(len(values)).astype(np.int64)
    indices[0] = 2**31 - 1
    keys = _keys(torch.from_numpy(values), torch.from_numpy(indices))
    want = np.lexsort((indices, -values))  # -0.0 == 0.0 here, so they tie and go by index
    np.testing.assert_array_equal(torch.argsort(keys, descending=True).numpy(), want)
    np.testing.assert_array_equal(_key_indices(keys).numpy(), indices)
    np.testing.assert_array_equal(_key_values(keys).numpy(), values + np.float32(0.0))  # -0.0 comes back as 0.0


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("kind", ["ties", "gauss"])
def test_merge_block_matches_lexsort_across_blocks(k, kind):
    """Blocks laid out as `_BlockScorer.block` does (padded with -inf), narrower and wider than k: the seed
    bound, the threshold path, its too-many-candidates fallback and `_block_topk` all feed one running top k."""
    rng = np.random.default_rng(k)
    rows, widths = 60, [7, 300, 256, 40, 300, 7]
    if kind == "ties":  # few distinct values: ties at every threshold, within and across blocks
        scores = rng.integers(0, 6, size=(rows, sum(widths))).astype(np.float32)
    else:
        scores = rng.normal(size=(rows, sum(widths))).astype(np.float32)
    best, r0 = None, 0
    for width in widths:
        block = torch.full((rows, _padded(width)), float("-inf"))
        block[:, :width] = torch.from_numpy(scores[:, r0 : r0 + width])
        best = _merge_block(best, block, width, r0, k)
        r0 += width
    want = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    np.testing.assert_array_equal(_key_indices(best).numpy(), want)
    np.testing.assert_array_equal(_key_values(best).numpy(), np.take_along_axis(scores, want, axis=1))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_topk_same_for_any_thread_count_and_settings_restored(threads):
    """The workers share out the query chunks: any number of them gives the naive result, and the torch and
    BLAS thread settings are what they were before the call."""
    query, ref = make_data("duplicates", seed=3, n_query=300, n_ref=900)
    want_s, want_i = naive_topk(query, ref, 7, "cos")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        blas = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
        for chunk, ref_chunk in ((None, None), (37, 256), (300, 100)):
            s, i = topk_neighbors(query, ref, 7, "cos", chunk, ref_chunk_size=ref_chunk)
            np.testing.assert_array_equal(i.numpy(), want_i, err_msg=f"chunks={chunk},{ref_chunk}")
            np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-5, atol=1e-5)
        assert torch.get_num_threads() == threads
        assert [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"] == blas
    finally:
        torch.set_num_threads(before)


def test_negative_zero_ties_with_zero():
    block = torch.tensor([[-1.0, 0.0, -0.0, -2.0, 0.0, -3.0], [-0.0, -1.0, 0.0, -2.0, -0.0, -3.0]])
    assert _block_topk(block, 2)[1].tolist() == [[1, 2], [0, 2]]


def test_ties_go_to_the_lower_index():
    ref = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    for chunk, ref_chunk in CHUNKS:
        _, i = topk_neighbors(np.array([[1.0, 0.0]]), ref, 4, "cos", chunk, ref_chunk_size=ref_chunk)
        assert i.tolist() == [[1, 3, 4, 0]]


def test_leave_one_out_never_returns_self_even_with_duplicates():
    ref = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # rows 2j and 2j+1 are identical
    for distance in ("cos", "l2"):
        s, i = topk_neighbors(ref, ref, 1, distance, chunk_size=4, exclude_self=True, ref_chunk_size=3)
        assert i.flatten().tolist() == [1, 0, 3, 2, 5, 4]
        np.testing.assert_allclose(s.flatten().numpy(), 1.0 if distance == "cos" else 0.0, atol=1e-6)


def test_k_larger_than_bank_returns_what_exists():
    ref = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    assert topk_neighbors(ref, ref, 10)[1].shape == (3, 3)
    assert topk_neighbors(ref, ref, 10, exclude_self=True)[1].shape == (3, 2)
    assert topk_neighbors(ref[:1], ref[:1], 5, exclude_self=True)[1].shape == (1, 0)


def test_accepts_tensors_and_float64_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(5, 6)), rng.normal(size=(8, 6))
    want = naive_topk(q, r, 3, "l2")[1]
    assert (topk_neighbors(torch.tensor(q), torch.tensor(r), 3, "l2")[1].numpy() == want).all()
    with pytest.raises(ValueError, match="distance"):
        topk_neighbors(q, r, 3, "dot")
    with pytest.raises(ValueError, match="NaN"):
        topk_neighbors(np.full((2, 6), np.nan), r, 3)
    with pytest.raises(ValueError, match="exclude_self"):
        topk_neighbors(q, r, 3, exclude_self=True)


def test_balanced_spans_cover_without_tiny_remainder():
    assert balanced_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert balanced_spans(9, 4) == [(0, 3), (3, 6), (6, 9)]
    assert balanced_spans(8193, 4096) == [(0, 2731), (2731, 5462), (5462, 8193)]
    assert balanced_spans(0, 4) == []


# --- recall@K and kNN classification ----------------------------------------------------------------------------


def labelled(kind, seed, exclude_self):
    query, ref = make_data(kind, seed)
    rng = np.random.default_rng(seed + 100)
    ref_labels = rng.integers(0, 5, size=len(ref))
    query_labels = rng.integers(0, 7, size=len(query))  # labels 5 and 6 are absent from the bank
    if exclude_self:
        query, query_labels = ref, ref_labels.copy()
        ref_labels[0] = query_labels[0] = 9  # a singleton class: no other row of its label
    return query, query_labels, ref, ref_labels


@pytest.mark.parametrize("distance", ["cos", "l2"])
@pytest.mark.parametrize("kind", ["gauss", "dyadic", "duplicates"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_recall_at_k_matches_naive(distance, kind, exclude_self):
    query, qy, ref, ry = labelled(kind, 3, exclude_self)
    ks = (1, 2, 5, 10, 200)
    want = naive_recall(query, qy, ref, ry, ks, distance, exclude_self)
    for chunk in (None, 4):
        got = recall_at_k(query, qy, ref, ry, ks, distance, exclude_self, chunk_size=chunk)
        assert got == pytest.approx(want, abs=1e-12)
    missing = sum(
        1 for i, y in enumerate(qy) if not any(ry[j] == y for j in range(len(ry)) if not exclude_self or j != i)
    )
    assert missing > 0
    assert queries_without_bank_label(qy, ry, exclude_self) == missing


def test_recall_counts_absent_labels_as_misses():
    ref = np.eye(3, dtype=np.float32)
    got = recall_at_k(ref, [0, 1, 7], ref, [0, 1, 2], ks=[1, 3])
    assert got == {1: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}


@pytest.mark.parametrize("distance", ["cos", "l2"])
@pytest.mark.parametrize("kind", ["gauss", "dyadic", "duplicates"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_classify_matches_naive(distance, kind, exclude_self):
    query, _, ref, ry = labelled(kind, 5, exclude_self)
    for k in (1, 3, 8, 500):
        want = naive_knn(query, ref, ry, k, distance, exclude_self)
        for chunk in (None, 6):
            got = knn_classify(query, ref, ry, k, distance, exclude_self, chunk_size=chunk)
            np.testing.assert_array_equal(got, want, err_msg=f"k={k}")


def test_knn_predict_score_is_the_winner_share_of_the_vote_weight():
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # cos weights (1 + cos) / 2: for query 0, rows weigh 1, 0.5, 0.5, 0 -> class 3 gets 1 + 0.5 of 2 in all
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]], dtype=np.float32)
    labels, share = knn_predict(query, ref, [3, 3, 4, 4], k=4)
    assert labels.tolist() == knn_classify(query, ref, [3, 3, 4, 4], k=4).tolist() == [3, 3]
    assert share.tolist() == pytest.approx([1.5 / 2.0, 1.5 / 2.0])
    _, alone = knn_predict(query, ref, [3, 3, 4, 4], k=1)
    assert alone.tolist() == [1.0, 1.0]


def test_knn_vote_tie_goes_to_the_class_of_the_nearest_neighbour():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    # Class 9: one neighbour at cos 1 (weight 1). Class 1: two at cos 0 (weights 0.5 + 0.5). Exact tie at 1.0;
    # the nearest neighbour is class 9, although 1 is the smaller label and has more votes.
    ref = np.array([[0.0, 1.0], [0.0, -1.0], [2.0, 0.0]], dtype=np.float32)
    assert knn_classify(query, ref, [1, 1, 9], k=3).tolist() == [9]
    # All at the same similarity: the classes tie 2-2 and the lowest-index row (label 7) decides.
    ref = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0]], dtype=np.float32)
    assert knn_classify(query, ref, [7, 2, 7, 2], k=4).tolist() == [7]
    assert knn_classify(query, ref, np.array(["b", "a", "b", "a"]), k=4).tolist() == ["b"]


def test_knn_metrics_matches_independent_references():
    query, qy, ref, ry = labelled("gauss", 8, exclude_self=False)
    got = knn_metrics(query, qy, ref, ry, k=5, ks=(1, 10), distance="l2", chunk_size=4)
    preds = naive_knn(query, ref, ry, 5, "l2")
    recall = naive_recall(query, qy, ref, ry, (1, 10), "l2")
    assert got["knn_accuracy"] == pytest.approx(accuracy_score(qy, preds))
    assert got["knn_f1"] == pytest.approx(f1_score(qy, preds, average="macro"))
    assert got["recall@1"] == pytest.approx(recall[1]) and got["recall@10"] == pytest.approx(recall[10])
    assert got["queries_without_bank_label"] == np.isin(qy, [5, 6]).sum()
    assert set(knn_metrics(query, qy, ref, ry, ks=None)) == {"knn_accuracy", "knn_f1"}


# --- bank statistics --------------------------------------------------------------------------------------------


def naive_bank_statistics(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    z = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    classes = sorted(set(labels.tolist()))
    intra = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        pairs = [z[i] @ z[j] for i in rows for j in rows if i < j]
        if pairs:
            intra.append(np.mean(pairs))
    cent = np.array([z[labels == c].mean(axis=0) for c in classes])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    inter = [cent[a] @ cent[b] for a in range(len(classes)) for b in range(a + 1, len(classes))]
    margins = []
    for i in range(len(z)):
        same = [z[i] @ z[j] for j in range(len(z)) if j != i and labels[j] == labels[i]]
        other = [z[i] @ z[j] for j in range(len(z)) if labels[j] != labels[i]]
        if same and other:
            margins.append(max(same) - max(other))
    return {
        "size": len(z),
        "num_classes": len(classes),
        "intra_class_cosine": np.mean(intra),
        "inter_class_cosine": np.mean(inter),
        "mean_margin": np.mean(margins),
        "margin_rows": len(margins),
        "positive_margin_fraction": np.mean(np.array(margins) > 0),
    }


@pytest.mark.parametrize("seed", range(3))
def test_bank_statistics_matches_naive(seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 16))
    labels = rng.integers(0, 6, size=90)
    labels[0] = 17  # a singleton class: no pairs, no margin, but a centroid
    emb = (centers[labels % 6] + rng.normal(size=(90, 16))).astype(np.float32)
    got = bank_statistics(emb, labels, chunk_size=7)
    want = naive_bank_statistics(emb, labels)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=2e-6), key
    assert got["margin_rows"] == 89


def test_bank_statistics_undefined_parts_are_nan():
    got = bank_statistics(np.eye(3, dtype=np.float32), [0, 1, 2])
    assert got["num_classes"] == 3 and math.isnan(got["intra_class_cosine"]) and math.isnan(got["mean_margin"])
    assert got["inter_class_cosine"] == pytest.approx(0.0)
    assert math.isnan(bank_statistics(np.ones((4, 2), dtype=np.float32), [5] * 4)["inter_class_cosine"])


# --- collapse detection -----------------------------------------------------------------------------------------


def test_prediction_diversity_entropy_by_hand():
    got = prediction_diversity([3, 3, 1, 2], num_labels=4)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert got["distinct_predictions"] == 3
    assert got["prediction_entropy"] == pytest.approx(h)
    assert got["normalized_prediction_entropy"] == pytest.approx(h / math.log(4))
    assert prediction_diversity(["a"] * 5) == {"distinct_predictions": 1, "prediction_entropy": 0.0}


def test_is_collapsed_rule():
    labels = np.arange(20) % 5
    assert is_collapsed(np.zeros(20), labels)
    assert is_collapsed(np.arange(20) % 2, labels)  # 2 predicted classes out of 5
    assert not is_collapsed(np.arange(20) % 3, labels)
    assert not is_collapsed(labels, labels)
    assert not is_collapsed([0, 1, 0, 1], [1, 0, 0, 1])  # binary data, both classes predicted
    assert is_collapsed([1, 1, 1, 1], [1, 0, 0, 1])
    assert not is_collapsed([], [])


# --- evaluate modules -------------------------------------------------------------------------------------------


def test_evaluate_modules_load_by_path_offline(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    from hf_metric.evaluation.evaluate_modules import path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("evaluate tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    query, qy, ref, ry = labelled("gauss", 11, exclude_self=False)

    recall = evaluate.load(path("recall_at_k"), keep_in_memory=True)
    recall.add_batch(embeddings=query[:20], labels=qy[:20])
    got = recall.compute(
        embeddings=query[20:], labels=qy[20:], reference_embeddings=ref, reference_labels=ry, ks=[1, 5]
    )
    want = naive_recall(query, qy, ref, ry, (1, 5), "cos")
    missing = int(np.isin(qy, [5, 6]).sum())  # labels 5 and 6 are not in the bank
    assert missing > 0
    assert got == {
        "recall@1": pytest.approx(want[1]),
        "recall@5": pytest.approx(want[5]),
        "queries_without_bank_label": missing,
    }

    knn = evaluate.load(path("knn_accuracy") + "/knn_accuracy.py", keep_in_memory=True)
    got = knn.compute(embeddings=ref, labels=ry, k=3)  # no bank: leave-one-out on the inputs
    preds = naive_knn(ref, ref, ry, 3, "cos", exclude_self=True)
    assert got["knn_accuracy"] == pytest.approx(accuracy_score(ry, preds))
    assert got["knn_f1"] == pytest.approx(f1_score(ry, preds, average="macro"))


def test_topk_under_inference_mode_on_worker_threads():
    """Worker threads write into result tensors made in the caller's inference mode (the model's kNN open-set
    score at inference): they must share that mode, and the result must not change."""
    from hf_metric.model.neighbors import topk_neighbors

    gen = torch.Generator().manual_seed(0)
    # enough small chunks that the pool's worker takes some before this thread has done them all
    query, ref = torch.randn(2000, 32, generator=gen), torch.randn(3000, 32, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plain = topk_neighbors(query, ref, 3, chunk_size=8)
        with torch.inference_mode():
            inside = topk_neighbors(query, ref, 3, chunk_size=8)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(plain[0], inside[0]) and torch.equal(plain[1], inside[1])
