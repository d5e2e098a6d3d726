"""Holds the `evaluate` script `recall_at_k.py`; load it with `evaluate.load(hf_metric.evaluate_modules.path(...))`."""
