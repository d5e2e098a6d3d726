"""Evaluation metrics as plain functions (no Hub download, unlike `evaluate.load("accuracy")`).

Classification metrics on predictions, and retrieval metrics on embeddings (recall@K, kNN classification,
bank statistics, collapse detection) that need no trainer: they take arrays or tensors and search exactly with
`neighbors.topk_neighbors`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.neighbors import Distance, as_float_tensor, nearest_same_and_other, topk_neighbors
from .retrieval import cmc_from_hits, hit_matrix


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose prediction equals the label; 0.0 for no rows."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if len(labels) else 0.0


def per_class_f1(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1 and support (true rows) of every class present in `labels` or `predictions`, sorted by class.

    Returns `(classes, f1, support)`; a class with a zero denominator scores 0. Shared by `macro_f1` and the
    per-class F1 picture, so both count the same way.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    y_true, y_pred = inverse[: len(labels)], inverse[len(labels) :]
    n = len(classes)
    true_pos = np.bincount(y_true[y_true == y_pred], minlength=n).astype(float)
    support = np.bincount(y_true, minlength=n).astype(float)
    predicted = np.bincount(y_pred, minlength=n).astype(float)
    denom = support + predicted
    f1 = np.divide(2 * true_pos, denom, out=np.zeros(n), where=denom > 0)
    return classes, f1, support.astype(np.int64)


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in `labels` or `predictions`.

    Same convention as scikit-learn's `f1_score(average="macro")`: a class with no true and no predicted row
    is left out, a class with a zero denominator scores 0.
    """
    if len(labels) == 0:
        return 0.0
    return float(per_class_f1(predictions, labels)[1].mean())


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of rows whose label is among the k highest logits (k is capped at the number of classes)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of argmax predictions (rows already restricted to classifier_mask = 1)."""
    predictions = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": accuracy(predictions, labels), "f1": macro_f1(predictions, labels)}


# --- Retrieval metrics on embeddings -------------------------------------------------------------------------
# Everything below searches with `neighbors.topk_neighbors`: exact, blocked (no N_query x N_ref matrix), and
# deterministic on ties (equal scores are ordered by reference index, lowest first).

LabelArray = np.ndarray | torch.Tensor | Sequence[Any]
Embeddings = np.ndarray | torch.Tensor
Search = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""`topk_neighbors(query, ref, k, distance, chunk_size, exclude_self)` or a function like it."""

L2_WEIGHT_EPS = 1e-6
"""Added to Euclidean distances before inverting them into vote weights, so that a distance of 0 is finite."""


def _labels_array(labels: LabelArray) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    return labels


def _ks_tuple(ks: int | Iterable[int]) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int | np.integer) else tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def queries_without_bank_label(query_labels: LabelArray, ref_labels: LabelArray, exclude_self: bool = False) -> int:
    """How many queries have no reference row of their label, so can never be a hit in `recall_at_k`.

    With `exclude_self` (the query set is the bank), a query whose label occurs only in its own row counts.
    A large count means recall@K is bounded well below 1 by the bank, not by the model.
    """
    query_labels, ref_labels = _labels_array(query_labels), _labels_array(ref_labels)
    if exclude_self:
        _, inverse, counts = np.unique(ref_labels, return_inverse=True, return_counts=True)
        return int((counts[inverse] < 2).sum())
    return int((~np.isin(query_labels, ref_labels)).sum())


def recall_from_neighbor_labels(
    query_labels: LabelArray, neighbor_labels: np.ndarray, ks: int | Iterable[int]
) -> dict[int, float]:
    """Recall@K from the labels of each query's neighbours, nearest first ((N_query, k) array): CMC@K over every
    query (`retrieval.cmc_from_hits`, the one implementation of both names).

    A query is a hit at K if one of its first K neighbours has its label; rows with fewer than K columns use
    what they have. Shared by `recall_at_k` and the benchmark, so that other search backends (faiss, sklearn)
    are scored by the same code.
    """
    return cmc_from_hits(hit_matrix(_labels_array(query_labels), np.asarray(neighbor_labels)), _ks_tuple(ks))


def neighbor_weights(neighbor_scores: np.ndarray | torch.Tensor, distance: str = "cos") -> np.ndarray:
    """Vote weights (float64, >= 0) from `topk_neighbors` scores.

    "cos": (1 + cos) / 2, the similarity mapped affinely onto [0, 1]: nearer neighbours weigh more, in
    proportion to the similarity itself, with no temperature to tune, and a neighbour pointing the opposite way
    weighs nothing. "l2": 1 / (distance + `L2_WEIGHT_EPS`), the usual inverse-distance weighting (as in
    scikit-learn's `KNeighborsClassifier(weights="distance")`; a duplicate of the query outweighs the rest).
    """
    if isinstance(neighbor_scores, torch.Tensor):
        neighbor_scores = neighbor_scores.detach().cpu().numpy()
    scores = np.asarray(neighbor_scores, dtype=np.float64)
    if distance == "cos":
        return np.clip((1.0 + scores) / 2.0, 0.0, 1.0)
    if distance == "l2":
        return 1.0 / (scores + L2_WEIGHT_EPS)
    raise ValueError(f"distance must be 'cos' or 'l2', got {distance!r}")


def knn_vote(neighbor_labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The class with the largest total weight among each row's neighbours (nearest first).

    Ties between classes (equal float64 totals) go to the tied class whose best-ranked neighbour comes first,
    i.e. the class of the nearest neighbour among the tied classes; with the deterministic neighbour order of
    `topk_neighbors`, the prediction is deterministic too.
    """
    neighbor_labels, weights = np.asarray(neighbor_labels), np.asarray(weights, dtype=np.float64)
    n, k = neighbor_labels.shape
    if k == 0:
        raise ValueError("cannot vote without neighbours (empty bank)")
    _, codes = np.unique(neighbor_labels, return_inverse=True)
    codes = codes.reshape(n, k)
    winners = np.empty(n, dtype=np.int64)
    rows_per_chunk = max(1, 2**22 // (k * k))  # the (rows, k, k) comparison below stays around 4M entries
    for start in range(0, n, rows_per_chunk):
        c, w = codes[start : start + rows_per_chunk], weights[start : start + rows_per_chunk]
        # totals[i, j]: total weight of the class of neighbour j. Neighbours of one class sum the same
        # terms in the same order, so their totals are bit-identical and the tie test below is exact.
        totals = np.where(c[:, :, None] == c[:, None, :], w[:, None, :], 0.0).sum(axis=2)
        winners[start : start + len(c)] = (totals == totals.max(axis=1, keepdims=True)).argmax(axis=1)
    return neighbor_labels[np.arange(n), winners]


def recall_at_k(
    query_emb: Embeddings,
    query_labels: LabelArray,
    ref_emb: Embeddings,
    ref_labels: LabelArray,
    ks: int | Iterable[int] = (1, 5, 10),
    distance: Distance = "cos",
    exclude_self: bool = False,
    chunk_size: int | None = None,
    search: Search = topk_neighbors,
) -> dict[int, float]:
    """Recall@K of a query set against a reference bank: the fraction of queries with their label among
    their K nearest reference rows.

    Queries whose label is absent from the bank (or, with `exclude_self`, present only in their own row) are
    misses, so recall@K is comparable across banks; `queries_without_bank_label` counts them. When the bank
    has fewer than K rows (K - 1 with `exclude_self`), all of them are searched. With `exclude_self` the
    query set is the bank (leave-one-out): a row is never its own neighbour. `search`: a function with the
    signature of `topk_neighbors` (e.g. `sharded_search.sharded_topk_neighbors` in a multi-process run).
    """
    ks = _ks_tuple(ks)
    query_labels, ref_labels = _labels_array(query_labels), _labels_array(ref_labels)
    _, indices = search(query_emb, ref_emb, max(ks), distance, chunk_size=chunk_size, exclude_self=exclude_self)
    return recall_from_neighbor_labels(query_labels, ref_labels[indices.cpu().numpy()], ks)


def knn_predict(
    query_emb: Embeddings,
    ref_emb: Embeddings,
    ref_labels: LabelArray,
    k: int = 10,
    distance: Distance = "cos",
    exclude_self: bool = False,
    chunk_size: int | None = None,
    search: Search = topk_neighbors,
) -> tuple[np.ndarray, np.ndarray]:
    """`knn_classify`'s labels and, per query, the winner's share of the total vote weight (a confidence in
    [0, 1]: 1 when every neighbour voted for it), for callers that report a score (the kNN pipeline)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ref_labels = _labels_array(ref_labels)
    scores, indices = search(query_emb, ref_emb, k, distance, chunk_size=chunk_size, exclude_self=exclude_self)
    neighbor_labels, weights = ref_labels[indices.cpu().numpy()], neighbor_weights(scores, distance)
    predicted = knn_vote(neighbor_labels, weights)
    winner_weight = np.where(neighbor_labels == predicted[:, None], weights, 0.0).sum(axis=1)
    total = weights.sum(axis=1)
    return predicted, winner_weight / np.where(total > 0, total, 1.0)


def knn_classify(
    query_emb: Embeddings, ref_emb: Embeddings, ref_labels: LabelArray, *args: Any, **kwargs: Any
) -> np.ndarray:
    """Labels predicted by a weighted vote of the k nearest bank rows (weights: `neighbor_weights`; ties:
    `knn_vote`): `knn_predict` without the confidence, with the same arguments (`k=10, distance="cos",
    exclude_self=False, chunk_size=None`). Labels keep their type (ints, strings). Fewer than k bank rows: all
    of them vote."""
    return knn_predict(query_emb, ref_emb, ref_labels, *args, **kwargs)[0]


def knn_metrics(
    query_emb: Embeddings,
    query_labels: LabelArray,
    ref_emb: Embeddings,
    ref_labels: LabelArray,
    k: int = 10,
    ks: int | Iterable[int] | None = (1, 5, 10),
    distance: Distance = "cos",
    exclude_self: bool = False,
    chunk_size: int | None = None,
    search: Search = topk_neighbors,
) -> dict[str, float]:
    """kNN accuracy and macro-F1 (`knn_classify`), and recall@K for `ks`, from a single neighbour search.

    Keys: "knn_accuracy", "knn_f1", then (when `ks`) "recall@K" for each K and "queries_without_bank_label".
    Equal to calling `knn_classify` and `recall_at_k` separately (the first k of a top-k' search, k <= k', are
    exactly the top k), at the cost of one search instead of two.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ks = _ks_tuple(ks) if ks else ()
    query_labels, ref_labels = _labels_array(query_labels), _labels_array(ref_labels)
    scores, indices = search(
        query_emb, ref_emb, max((k, *ks)), distance, chunk_size=chunk_size, exclude_self=exclude_self
    )
    neighbor_labels = ref_labels[indices.cpu().numpy()]
    predictions = knn_vote(neighbor_labels[:, :k], neighbor_weights(scores[:, :k], distance))
    out = {"knn_accuracy": accuracy(predictions, query_labels), "knn_f1": macro_f1(predictions, query_labels)}
    if ks:
        out.update(
            {f"recall@{K}": v for K, v in recall_from_neighbor_labels(query_labels, neighbor_labels, ks).items()}
        )
        out["queries_without_bank_label"] = float(queries_without_bank_label(query_labels, ref_labels, exclude_self))
    return out


def bank_statistics(emb: Embeddings, labels: LabelArray, chunk_size: int | None = None) -> dict[str, float]:
    """How well separated the classes of an embedding bank are, by cosine similarity (no N x N matrix).

    Rows are L2-normalised first (an all-zero row has cosine 0 with everything). Keys:

    - "size": rows; "num_classes": distinct labels.
    - "intra_class_cosine": for each class with >= 2 rows, the mean cosine over its unordered pairs of
      distinct rows; then the unweighted mean over those classes (so large classes do not dominate).
      Computed exactly from class sums: sum over pairs i != j of z_i.z_j = |sum z|^2 - sum |z_i|^2.
    - "inter_class_cosine": the mean cosine over unordered pairs of distinct classes of their centroids (the
      mean of the class's normalised rows, normalised again). Near 1: classes collapse onto one direction.
    - "mean_margin": for each row with both another row of its class and a row of another class, the cosine
      to its nearest same-class row minus the cosine to its nearest other-class row; averaged over such rows
      ("margin_rows" of them). "positive_margin_fraction": the fraction of them with a margin > 0.

    A statistic with nothing to average over is NaN.
    """
    e = as_float_tensor(emb)
    labels = _labels_array(labels)
    if e.ndim != 2 or e.shape[0] != len(labels):
        raise ValueError(f"expected (N, dim) embeddings for {len(labels)} labels, got shape {tuple(e.shape)}")
    classes, codes = np.unique(labels, return_inverse=True)
    n_classes, nan = len(classes), float("nan")
    codes_t = torch.from_numpy(codes.astype(np.int64)).to(e.device)
    sums = torch.zeros(n_classes, e.shape[1], dtype=torch.float64, device=e.device)
    sq_norms = torch.zeros(n_classes, dtype=torch.float64, device=e.device)
    for start in range(0, e.shape[0], 16384):  # float64 copies of one slice at a time
        z = F.normalize(e[start : start + 16384], dim=1).double()
        sums.index_add_(0, codes_t[start : start + 16384], z)
        sq_norms.index_add_(0, codes_t[start : start + 16384], (z * z).sum(dim=1))
    counts = torch.bincount(codes_t, minlength=n_classes).double()
    pairs = counts * (counts - 1)
    has_pairs = pairs > 0
    intra = ((sums * sums).sum(dim=1) - sq_norms)[has_pairs] / pairs[has_pairs]
    centroids = F.normalize(sums, dim=1)
    total = centroids.sum(dim=0)
    inter = ((total @ total) - (centroids * centroids).sum()) / (n_classes * (n_classes - 1)) if n_classes > 1 else nan
    margin = torch.from_numpy(nearest_margins(e, codes, chunk_size))
    return {
        "size": float(e.shape[0]),
        "num_classes": float(n_classes),
        "intra_class_cosine": float(intra.mean()) if len(intra) else nan,
        "inter_class_cosine": float(inter),
        "mean_margin": float(margin.mean()) if len(margin) else nan,
        "margin_rows": float(len(margin)),
        "positive_margin_fraction": float((margin > 0).double().mean()) if len(margin) else nan,
    }


def nearest_margins(emb: Embeddings, labels: LabelArray, chunk_size: int | None = None) -> np.ndarray:
    """Per row, cosine to its nearest same-class row minus cosine to its nearest other-class row (leave-one-out),
    float64, for the rows that have both (others are left out). Positive: the row sits closer to its own class.
    Used by `bank_statistics` ("mean_margin") and the margin histogram."""
    codes = np.unique(_labels_array(labels), return_inverse=True)[1]
    same, other = nearest_same_and_other(as_float_tensor(emb), codes, "cos", chunk_size)
    both = torch.isfinite(same) & torch.isfinite(other)
    return (same.double() - other.double())[both].cpu().numpy()


# --- Collapse detection ----------------------------------------------------------------------------------------


def prediction_diversity(predictions: LabelArray, num_labels: int | None = None) -> dict[str, float]:
    """How spread out the predicted classes are: "distinct_predictions" and "prediction_entropy" (nats) of the
    predicted-class histogram; with `num_labels`, also "normalized_prediction_entropy" (entropy / log
    num_labels, 1 = uniform over all classes; NaN when num_labels < 2). No predictions: 0 and 0."""
    predictions = _labels_array(predictions)
    if not len(predictions):
        out = {"distinct_predictions": 0.0, "prediction_entropy": 0.0}
    else:
        _, counts = np.unique(predictions, return_counts=True)
        p = counts / counts.sum()
        out = {"distinct_predictions": float(len(counts)), "prediction_entropy": float(-(p * np.log(p)).sum())}
    if num_labels is not None:
        out["normalized_prediction_entropy"] = (
            out["prediction_entropy"] / math.log(num_labels) if num_labels > 1 else float("nan")
        )
    return out


def is_collapsed(predictions: LabelArray, labels: LabelArray, max_distinct: int = 2) -> bool:
    """True when the model predicts at most `max_distinct` distinct classes while the true labels of the same
    rows have more distinct classes than it predicts.

    That is the signature of a collapsed classifier or embedding (everything mapped to one or two classes),
    which accuracy alone can hide on imbalanced data. Data with only `max_distinct` classes or fewer are
    flagged only if the predictions use fewer classes than the labels (e.g. one class for two).
    """
    predictions, labels = _labels_array(predictions), _labels_array(labels)
    if not len(predictions):
        return False
    distinct_pred, distinct_true = len(np.unique(predictions)), len(np.unique(labels))
    return distinct_pred <= max_distinct and distinct_true > distinct_pred


COLLAPSE_REMEDIES = (
    "try a lower head.scale, a softer head.margin (or head.easy_margin: true), a head.temperature > 1 "
    "or a lower learning rate"
)
"""What the collapse warning suggests (see docs/heads_losses.md, "When to use which")."""


def collapse_statistics(
    logits: np.ndarray | torch.Tensor, labels: LabelArray, max_distinct: int = 2
) -> tuple[dict[str, float], bool]:
    """The collapse watch on one set of rows (a validation set, or a training batch): `prediction_diversity` of
    the argmax predictions plus "logit_std" (the standard deviation of all their logits: near 0 when the head
    scores every class alike), and whether the predictions are collapsed (`is_collapsed` with `max_distinct`)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits)
    predicted = logits.argmax(axis=-1)
    stats = prediction_diversity(predicted, num_labels=logits.shape[-1])
    stats["logit_std"] = float(logits.std()) if logits.size else 0.0
    return stats, is_collapsed(predicted, labels, max_distinct)
