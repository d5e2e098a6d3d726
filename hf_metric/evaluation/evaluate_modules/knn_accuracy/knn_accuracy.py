"""Accuracy and macro-F1 of a weighted kNN vote over a reference bank, as an `evaluate` metric (wraps
`hf_metric.evaluation.metrics.knn_metrics`)."""

import evaluate

from hf_metric.evaluation.evaluate_modules import embedding_metric
from hf_metric.evaluation.metrics import knn_metrics

_DESCRIPTION = """
kNN accuracy: each query embedding is classified by a similarity-weighted vote of its k nearest reference
rows (exact search; weights (1 + cos) / 2, or 1 / (distance + 1e-6) for "l2"; a tie between classes goes to
the class of the nearest neighbour among them), and the predictions are scored by accuracy and macro-F1.
Without reference rows the queries are searched leave-one-out against each other.
"""

_KWARGS_DESCRIPTION = (
    "\nArgs:\n"
    + embedding_metric.INPUTS_DESCRIPTION
    + """    k: neighbours that vote (default 10).
    distance: "cos" (default) or "l2".
Returns:
    "knn_accuracy" and "knn_f1" (floats in [0, 1]).
Examples:
    >>> import evaluate
    >>> from hf_metric.evaluation.evaluate_modules import path
    >>> knn = evaluate.load(path("knn_accuracy"))
    >>> knn.compute(embeddings=[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], labels=[0, 0, 1, 1], k=1)
    {"knn_accuracy": 1.0, 'knn_f1': 1.0}
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KnnAccuracy(embedding_metric.EmbeddingMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def score(self, query, labels, ref, ref_labels, exclude_self, k=10, distance="cos"):
        return knn_metrics(query, labels, ref, ref_labels, k=k, ks=None, distance=distance, exclude_self=exclude_self)
