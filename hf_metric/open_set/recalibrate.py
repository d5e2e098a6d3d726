"""Re-calibrate a trained model's open-set rule on a new validation file, without retraining.

Known outliers arrive after training (a hundred off-topic queries collected by hand), or the deployment wants
another operating point: the rule (score, threshold) is re-chosen by the one calibration
(`hf_metric.open_set.calibration.calibrate`, `criterion="auto"` by default) on the model's outputs for the file,
computed exactly as `hf-metric evaluate` computes them.

Only `config.json`'s rule keys (`RULE_KEYS`) change; the weights and stored statistics (kNN rows, Mahalanobis
fit) are reused as they are, so the safetensors file stays byte-identical. That is why a model that stores no
Mahalanobis fit is re-calibrated among the other scores only. The config is replaced atomically (in place), or
the whole folder is written atomically to a new place (`out_dir`). An ONNX export of the model keeps its old
rule: export again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import numpy as np

from ..atomic import atomic_directory, write_json_atomic
from ..model.open_set_scores import OUT_OF_SCOPE_ID
from .calibration import Calibration, calibrate
from .evaluation import OpenSetStatistics, all_scores, threshold_free_metrics
from .model_rule import calibration_metrics

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RULE_KEYS = ("open_set_score", "open_set_threshold", "open_set_fusion_stats", "open_set_calibration")
"""The config keys a re-calibration writes; nothing else in the folder changes."""


def file_scores(backend: Any, labeled: Any, featurizer: Any, batch_size: int = 64):
    """(scores, logits, labels, fusion statistics) of a labelled file (`read_test_file`) on a torch backend:
    every score the model's stored statistics allow, over the classifier rows and the out-of-scope rows, the
    fused score normalised on this file's in-scope rows (as training normalises it on its validation split)."""
    from ..data.parquet import input_column_of
    from ..inference.evaluate import _run_column

    column = input_column_of(labeled.source, labeled.table.column_names)
    outputs = _run_column(backend, featurizer, labeled.table.column(column), batch_size)
    labels = np.asarray(labeled.labels)
    rows = labeled.table.column("classifier_mask").to_numpy().astype(bool) | (labels == OUT_OF_SCOPE_ID)
    settings = backend.open_set_settings()
    stored = settings.statistics
    stats = OpenSetStatistics(stored.reference, stored.means, stored.precision, fusion_stats=None)
    logits, labels = outputs.logits[rows], labels[rows]
    scores = all_scores(
        logits, outputs.embeddings[rows], stats, labels, outputs.head_logits[rows], settings.energy_temperature
    )
    return scores, logits, labels, stats.fusion_stats


def recalibrate(
    model_dir: str,
    scores: dict[str, np.ndarray],
    logits: np.ndarray,
    labels: np.ndarray,
    fusion_stats: dict[str, list[float]] | None,
    score: str = "auto",
    criterion: str = "auto",
    target: float | None = None,
    out_dir: str | None = None,
) -> tuple[Calibration, dict[str, float]]:
    """Choose the rule on these rows and write it into `model_dir`'s config.json (or a copy at `out_dir`);
    returns the calibration and its metrics (`open_set_*`, `oos_auroc_*`/`oos_fpr95_*`)."""
    result = calibrate(scores, logits, labels, score, criterion, target)
    path = os.path.join(model_dir, CONFIG_FILE)
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config.update(
        open_set_score=result.score,
        open_set_threshold=float(result.threshold),
        open_set_fusion_stats=dict(fusion_stats) if result.score == "fused" else None,
        open_set_calibration=result.summary(),
    )
    if out_dir is None or os.path.abspath(out_dir) == os.path.abspath(model_dir):
        write_json_atomic(path, config)
    else:
        with atomic_directory(out_dir) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            write_json_atomic(os.path.join(tmp, CONFIG_FILE), config)
    metrics = calibration_metrics(result)
    if (labels == OUT_OF_SCOPE_ID).any():
        metrics.update(threshold_free_metrics(scores, labels))
    logger.info("open set re-calibrated: %s", result.describe())
    return result, metrics
