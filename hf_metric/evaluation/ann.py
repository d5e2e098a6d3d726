"""Optional approximate neighbour search (faiss IVF or HNSW) for large kNN references, exact below a size.

Exact search costs N_ref x dim per query: at a few million reference rows (image banks) a single query takes
tens of milliseconds, a validation set minutes. An inverted-file (IVF) or graph (HNSW) index of faiss answers
in a small fraction of that at a recall@10 below 1 (`bench/bench_ann.py` measures both against exact search).
Results are then no longer exact, so the index is only used from `min_size` reference rows on; smaller
references, leave-one-out searches and `type: exact` use `neighbors.topk_neighbors`.

`IndexedSearch` has the signature of `topk_neighbors`, so it plugs into `knn_predict`, `knn_metrics` and the
kNN pipeline (`search=`). It builds one index per reference and reuses it while the same reference comes back.
faiss comes with the `ann` extra (`pip install "hf_metric[ann]"`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config.model_sections import KnnIndexSettings
from ..model.neighbors import Distance, as_float_tensor, topk_neighbors
from ..optional import require


def build_index(ref: np.ndarray, distance: Distance, settings: KnnIndexSettings):
    """A faiss index over `ref` (float32, already L2-normalised for "cos"), trained and filled."""
    require("faiss", "ann", "knn_index type ivf/hnsw")
    import faiss

    dim = ref.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if distance == "cos" else faiss.METRIC_L2
    if settings.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, metric)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
    else:
        nlist = settings.nlist or max(1, int(4 * np.sqrt(len(ref))))
        quantizer = faiss.IndexFlatIP(dim) if distance == "cos" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, min(nlist, len(ref)), metric)
        index.train(ref)
        index.nprobe = settings.nprobe
    index.add(ref)
    return index


def _unit_rows(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=1).numpy()


class IndexedSearch:
    """`topk_neighbors` through a faiss index from `settings.min_size` reference rows on (module doc)."""

    def __init__(self, settings: dict[str, Any] | KnnIndexSettings | None = None) -> None:
        self.settings = KnnIndexSettings.from_dict(settings)
        self._key: tuple | None = None
        self._index = None

    def uses_index(self, n_ref: int, exclude_self: bool = False) -> bool:
        return self.settings.type != "exact" and n_ref >= self.settings.min_size and not exclude_self

    def __call__(self, query, ref, k: int, distance: Distance = "cos", **options: Any):
        """`topk_neighbors(query, ref, k, distance, **options)`, through the index when `uses_index`."""
        if not self.uses_index(len(ref), options.get("exclude_self", False)):
            return topk_neighbors(query, ref, k, distance, **options)
        q, r = as_float_tensor(query, "cpu"), as_float_tensor(ref, "cpu")
        key = (r.data_ptr(), tuple(r.shape), float(r[:: max(1, len(r) // 64)].double().sum()), distance)
        if key != self._key:  # a new (or changed) reference: build its index once
            self._index = build_index(_unit_rows(r) if distance == "cos" else r.numpy(), distance, self.settings)
            self._key = key
        k = min(k, len(ref))
        queries = _unit_rows(q) if distance == "cos" else np.ascontiguousarray(q.numpy())
        found, indices = self._index.search(queries, k)
        missing = (indices < 0).any(axis=1)  # an IVF probe can hold fewer than k rows: search those exactly
        if missing.any():
            rows = np.flatnonzero(missing)
            exact_s, exact_i = topk_neighbors(q[rows], r, k, distance, **options)  # the caller's chunks, precision
            found[rows] = exact_s.numpy() if distance == "cos" else exact_s.numpy() ** 2
            indices[rows] = exact_i.numpy()
        scores = torch.from_numpy(found if distance == "cos" else np.sqrt(np.maximum(found, 0.0)))
        return scores.to(torch.float32), torch.from_numpy(indices.astype(np.int64))
