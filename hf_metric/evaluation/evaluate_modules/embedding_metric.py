"""The part the `evaluate` scripts here share: query `embeddings` and integer `labels` as inputs (so `add_batch`
works), the reference bank as `compute` keyword arguments, and leave-one-out search when there is no bank.

A script subclasses `EmbeddingMetric`, sets `DESCRIPTION`/`KWARGS_DESCRIPTION` and implements `score`. It imports
this module (not the class) so that `evaluate`, which takes the first metric class it finds in a script, finds
the script's own class.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

_FLOATS = (
    datasets.List(datasets.Value("float32"))
    if hasattr(datasets, "List")
    else datasets.Sequence(datasets.Value("float32"))
)

INPUTS_DESCRIPTION = """\
    embeddings: query embeddings, one list of floats per row.
    labels: integer label of each query row.
    reference_embeddings: optional bank embeddings, (N_ref, dim); default: the queries, leave-one-out.
    reference_labels: integer labels of the bank rows (with `reference_embeddings`).
"""
"""The `Args:` lines every script here starts with."""


class EmbeddingMetric(evaluate.Metric):
    DESCRIPTION = ""
    KWARGS_DESCRIPTION = ""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation="",
            inputs_description=self.KWARGS_DESCRIPTION,
            features=datasets.Features({"embeddings": _FLOATS, "labels": datasets.Value("int64")}),
        )

    def _compute(self, embeddings, labels, reference_embeddings=None, reference_labels=None, **options: Any):
        # evaluate hands list features back as Python lists (its "numpy" format only takes scalar features).
        query, labels = np.asarray(embeddings, dtype=np.float32), np.asarray(labels)
        if (reference_embeddings is None) != (reference_labels is None):
            raise ValueError("pass both reference_embeddings and reference_labels, or neither")
        loo = reference_embeddings is None
        ref = query if loo else np.asarray(reference_embeddings, dtype=np.float32)
        ref_labels = labels if loo else np.asarray(reference_labels)
        return self.score(query, labels, ref, ref_labels, loo, **options)

    def score(
        self, query: np.ndarray, labels: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, exclude_self: bool
    ) -> dict[str, Any]:
        """The metric of `query`/`labels` against the bank `ref`/`ref_labels` (the queries themselves, searched
        leave-one-out, when `exclude_self`); the script's own `compute` options follow as keywords."""
        raise NotImplementedError
