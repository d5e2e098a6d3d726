"""The `evaluate` script `knn_accuracy.py`; load it with `evaluate.load(evaluate_modules.path("knn_accuracy"))`."""
