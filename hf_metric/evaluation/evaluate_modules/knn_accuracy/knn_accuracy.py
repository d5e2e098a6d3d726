"""Accuracy and macro-F1 of a weighted kNN vote over a reference bank, as an `evaluate` metric (wraps
`hf_metric.evaluation.metrics.knn_metrics`)."""

import datasets
import evaluate
import numpy as np

from hf_metric.evaluation.metrics import knn_metrics

_DESCRIPTION = """
kNN accuracy: each query embedding is classified by a similarity-weighted vote of its k nearest reference
rows (exact search; weights (1 + cos) / 2, or 1 / (distance + 1e-6) for "l2"; a tie between classes goes to
the class of the nearest neighbour among them), and the predictions are scored by accuracy and macro-F1.
Without reference rows the queries are searched leave-one-out against each other.
"""

_KWARGS_DESCRIPTION = """
Args:
    embeddings: query embeddings, one list of floats per row.
    labels: integer label of each query row.
    reference_embeddings: optional bank embeddings, (N_ref, dim); default: the queries, leave-one-out.
    reference_labels: integer labels of the bank rows (with `reference_embeddings`).
    k: neighbours that vote (default 10).
    distance: "cos" (default) or "l2".
Returns:
    "knn_accuracy" and "knn_f1" (floats in [0, 1]).
Examples:
    >>> import evaluate
    >>> from hf_metric.evaluation.evaluate_modules import path
    >>> knn = evaluate.load(path("knn_accuracy"))
    >>> knn.compute(embeddings=[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], labels=[0, 0, 1, 1], k=1)
    {'knn_accuracy': 1.0, 'knn_f1': 1.0}
"""

_CITATION = ""

_FLOATS = (
    datasets.List(datasets.Value("float32"))
    if hasattr(datasets, "List")
    else datasets.Sequence(datasets.Value("float32"))
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KnnAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"embeddings": _FLOATS, "labels": datasets.Value("int64")}),
        )

    def _compute(self, embeddings, labels, reference_embeddings=None, reference_labels=None, k=10, distance="cos"):
        # evaluate hands list features back as Python lists (its "numpy" format only takes scalar features).
        query, labels = np.asarray(embeddings, dtype=np.float32), np.asarray(labels)
        if (reference_embeddings is None) != (reference_labels is None):
            raise ValueError("pass both reference_embeddings and reference_labels, or neither")
        loo = reference_embeddings is None
        ref = query if loo else np.asarray(reference_embeddings, dtype=np.float32)
        ref_labels = labels if loo else np.asarray(reference_labels)
        return knn_metrics(query, labels, ref, ref_labels, k=k, ks=None, distance=distance, exclude_self=loo)
