"""Open set: say "none of these" instead of forcing one of the known classes (or enrolled identities).

Everything about the rejection rule lives here, in the order it is used:

- `evaluation.py`: every score of a labelled set (`all_scores`: msp, energy, kNN, Mahalanobis, fused), the
  threshold-free metrics (AUROC, FPR at 95 % recall) and the accuracy / out-of-scope-recall curve;
  `OpenSetSettings` (a model's rule) and `OpenSetStatistics` (the class means and precision it needs);
- `calibration.py`: the ONE threshold calibration (criteria `accuracy`, `in_scope_recall`, `fpr`,
  `accuracy_drop`, and `auto`, which weighs how many out-of-scope validation rows there are), used after
  training, by galleries (unknown identities) and by re-calibration;
- `model_rule.py`: calibrate a trained model on its validation outputs and store the rule in its config;
- `recalibrate.py`: re-choose a trained model's rule on a new validation file (`hf-metric calibrate`);
- `onnx_graph.py`: the same score inside an exported ONNX graph.

The score functions themselves (`hf_metric.model.open_set_scores`) stay in `model/`: a saved model applies its
rule in `forward`, and that folder travels with the weights as remote code.
"""
