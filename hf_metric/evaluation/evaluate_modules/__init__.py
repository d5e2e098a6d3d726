"""`evaluate` metric modules for embeddings, loadable by local path with no Hub access.

`evaluate.load("recall_at_k")` would look the name up on the Hub; a path to a folder holding a script of the
same name is loaded from disk instead (the script is copied into the `evaluate` modules cache and imported
from there, so it imports `hf_metric` by absolute name). `path` gives that folder::

    import evaluate
    from hf_metric.evaluation.evaluate_modules import path

    recall = evaluate.load(path("recall_at_k"))
    recall.compute(embeddings=emb, labels=labels, ks=[1, 5])  # leave-one-out on `emb`

Both modules take `embeddings` (rows of floats) and integer `labels` as inputs (so `add_batch` works), and the
bank as `compute` keyword arguments `reference_embeddings` / `reference_labels`; without a bank, the inputs
are searched leave-one-out against themselves.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("recall_at_k", "knn_accuracy")


def path(name: str) -> str:
    """Folder of the module `name` (one of `MODULES`), for `evaluate.load`."""
    if name not in MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; available: {', '.join(MODULES)}")
    return str(Path(__file__).parent / name)
