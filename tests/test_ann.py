"""The optional approximate index (`evaluation.ann`): exact below `min_size`, close to exact above it."""

import numpy as np
import pytest
import torch

from hf_metric.errors import ConfigError
from hf_metric.evaluation.ann import IndexedSearch, KnnIndexSettings
from hf_metric.evaluation.metrics import knn_predict
from hf_metric.loading import config_from_dict
from hf_metric.model.neighbors import topk_neighbors

faiss = pytest.importorskip("faiss")


def clustered(n: int, seed: int, dim: int = 32, classes: int = 40):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(size=(n, dim)) * 0.8).astype(np.float32), labels


def naive_top(query, ref, k, distance):
    q, r = query.astype(np.float64), ref.astype(np.float64)
    if distance == "cos":
        q, r = q / np.linalg.norm(q, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True)
        s = q @ r.T
    else:
        s = -((q[:, None] - r[None]) ** 2).sum(-1)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_below_min_size_is_the_exact_search():
    ref, _ = clustered(500, 1)
    query, _ = clustered(40, 2)
    search = IndexedSearch({"type": "hnsw", "min_size": 501})
    s, i = search(query, ref, 10, "cos")
    want_s, want_i = topk_neighbors(query, ref, 10, "cos")
    assert torch.equal(i, want_i) and torch.equal(s, want_s)
    assert search._index is None  # no index was built


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
@pytest.mark.parametrize("distance", ["cos", "l2"])
def test_index_recall_against_float64_exact(index_type, distance):
    ref, ry = clustered(4000, 1)
    query, _qy = clustered(200, 2)
    search = IndexedSearch({"type": index_type, "min_size": 1000, "nprobe": 8})
    scores, indices = search(query, ref, 10, distance)
    want = naive_top(query, ref, 10, distance)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices.numpy(), want, strict=True)])
    assert recall >= 0.9  # approximate, but close
    exact_scores = topk_neighbors(query, ref, 10, distance)[0]
    order = 1 if distance == "cos" else -1
    assert (order * torch.diff(scores, dim=1) <= 1e-6).all()  # nearest first, like topk_neighbors
    assert torch.allclose(scores[:, 0], exact_scores[:, 0], atol=0.05 * exact_scores[:, 0].abs().max())
    built = search._index
    search(query[:5], ref, 3, distance)
    assert search._index is built  # the same reference reuses its index
    pred = knn_predict(query, ref, ry, 10, distance, search=search)[0]
    assert (pred == knn_predict(query, ref, ry, 10, distance)[0]).mean() > 0.9


def test_ivf_probes_with_too_few_rows_fall_back_to_exact():
    ref, _ = clustered(2000, 3)
    query, _ = clustered(30, 4)
    search = IndexedSearch({"type": "ivf", "min_size": 10, "nlist": 400, "nprobe": 1})  # ~5 rows per list
    _s, i = search(query, ref, 20, "cos")
    assert (i >= 0).all() and i.shape == (30, 20)
    unit = query / np.linalg.norm(query, axis=1, keepdims=True)
    short = (search._index.search(unit, 20)[1] < 0).any(axis=1)  # the probed list held fewer than 20 rows
    assert short.sum() > 5
    _want_s, want_i = topk_neighbors(query[short], ref, 20, "cos")
    assert torch.equal(i[torch.from_numpy(short)], want_i)


def test_the_exact_fallback_searches_with_the_callers_options(monkeypatch):
    """Rows an IVF probe cannot fill are searched exactly with the options the caller gave (chunk sizes,
    precision), not with the defaults."""
    import hf_metric.evaluation.ann as ann

    calls = []

    def spy(*args, **options):
        calls.append(options)
        return topk_neighbors(*args, **options)

    monkeypatch.setattr(ann, "topk_neighbors", spy)
    ref, _ = clustered(2000, 3)
    query, _ = clustered(30, 4)
    search = IndexedSearch({"type": "ivf", "min_size": 10, "nlist": 400, "nprobe": 1})
    options = {"chunk_size": 7, "ref_chunk_size": 300, "precision": "bf16"}
    _s, i = search(query, ref, 20, "cos", **options)
    assert calls == [options]  # one exact search, for the short rows only, with every option
    assert (i >= 0).all()


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"knn_index\.type"):
        KnnIndexSettings.from_dict({"type": "lsh"})
    with pytest.raises(ValueError, match="nprobe"):
        IndexedSearch({"nprobe": 0})
    cfg = config_from_dict(
        {"data": {"parquet_path": "x.parquet"}, "model": {"knn_index": {"type": "ivf", "min_size": 5}}}
    )
    assert cfg.model.knn_index.type == "ivf" and cfg.model.knn_index.min_size == 5
    with pytest.raises(ConfigError, match="knn_index"):
        config_from_dict({"data": {"parquet_path": "x.parquet"}, "model": {"knn_index": {"type": "ivf", "nlist": 0}}})
