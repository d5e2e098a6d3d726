"""Recall@K of embeddings against a reference bank, as an `evaluate` metric (wraps `hf_metric.evaluation.metrics`)."""

import datasets
import evaluate
import numpy as np

from hf_metric.evaluation.metrics import queries_without_bank_label, recall_at_k

_DESCRIPTION = """
Recall@K: the fraction of query embeddings that have a reference row of their own label among their K nearest
reference rows (exact search, cosine or Euclidean). Queries whose label is absent from the reference bank
count as misses; "queries_without_bank_label" says how many there were. Without reference rows the queries
are searched leave-one-out against each other (a row is never its own neighbour).
"""

_KWARGS_DESCRIPTION = """
Args:
    embeddings: query embeddings, one list of floats per row.
    labels: integer label of each query row.
    reference_embeddings: optional bank embeddings, (N_ref, dim); default: the queries, leave-one-out.
    reference_labels: integer labels of the bank rows (with `reference_embeddings`).
    ks: the K values (default [1, 5, 10]).
    distance: "cos" (default) or "l2".
Returns:
    "recall@K" for each K (float in [0, 1]) and "queries_without_bank_label" (int).
Examples:
    >>> import evaluate
    >>> from hf_metric.evaluation.evaluate_modules import path
    >>> recall = evaluate.load(path("recall_at_k"))
    >>> recall.compute(embeddings=[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], labels=[0, 0, 1], ks=[1])
    {'recall@1': 0.6666666666666666, 'queries_without_bank_label': 1}
"""

_CITATION = ""

_FLOATS = (
    datasets.List(datasets.Value("float32"))
    if hasattr(datasets, "List")
    else datasets.Sequence(datasets.Value("float32"))
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"embeddings": _FLOATS, "labels": datasets.Value("int64")}),
        )

    def _compute(
        self, embeddings, labels, reference_embeddings=None, reference_labels=None, ks=(1, 5, 10), distance="cos"
    ):
        # evaluate hands list features back as Python lists (its "numpy" format only takes scalar features).
        query, labels = np.asarray(embeddings, dtype=np.float32), np.asarray(labels)
        if (reference_embeddings is None) != (reference_labels is None):
            raise ValueError("pass both reference_embeddings and reference_labels, or neither")
        loo = reference_embeddings is None
        ref = query if loo else np.asarray(reference_embeddings, dtype=np.float32)
        ref_labels = labels if loo else np.asarray(reference_labels)
        recall = recall_at_k(query, labels, ref, ref_labels, ks=ks, distance=distance, exclude_self=loo)
        out = {f"recall@{k}": value for k, value in recall.items()}
        out["queries_without_bank_label"] = queries_without_bank_label(labels, ref_labels, exclude_self=loo)
        return out
