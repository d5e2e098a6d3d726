"""Holds the `evaluate` script `knn_accuracy.py`; load it with `evaluate.load(hf_metric.evaluate_modules.path(...))`."""
