"""The `evaluate` script `recall_at_k.py`; load it with `evaluate.load(evaluate_modules.path("recall_at_k"))`."""
