"""Recall@K of embeddings against a reference bank, as an `evaluate` metric (wraps `hf_metric.evaluation.metrics`)."""

import evaluate

from hf_metric.evaluation.evaluate_modules import embedding_metric
from hf_metric.evaluation.metrics import queries_without_bank_label, recall_at_k

_DESCRIPTION = """
Recall@K: the fraction of query embeddings that have a reference row of their own label among their K nearest
reference rows (exact search, cosine or Euclidean). Queries whose label is absent from the reference bank
count as misses; "queries_without_bank_label" says how many there were. Without reference rows the queries
are searched leave-one-out against each other (a row is never its own neighbour).
"""

_KWARGS_DESCRIPTION = (
    "\nArgs:\n"
    + embedding_metric.INPUTS_DESCRIPTION
    + """    ks: the K values (default [1, 5, 10]).
    distance: "cos" (default) or "l2".
Returns:
    "recall@K" for each K (float in [0, 1]) and "queries_without_bank_label" (int).
Examples:
    >>> import evaluate
    >>> from hf_metric.evaluation.evaluate_modules import path
    >>> recall = evaluate.load(path("recall_at_k"))
    >>> recall.compute(embeddings=[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], labels=[0, 0, 1], ks=[1])
    {"recall@1": 0.6666666666666666, 'queries_without_bank_label': 1}
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(embedding_metric.EmbeddingMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def score(self, query, labels, ref, ref_labels, exclude_self, ks=(1, 5, 10), distance="cos"):
        recall = recall_at_k(query, labels, ref, ref_labels, ks=ks, distance=distance, exclude_self=exclude_self)
        out = {f"recall@{k}": value for k, value in recall.items()}
        out["queries_without_bank_label"] = queries_without_bank_label(labels, ref_labels, exclude_self=exclude_self)
        return out
