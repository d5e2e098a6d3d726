"""Calibrate a trained model's open-set rejection on its validation split and store the rule in the model.

Called by `hf_metric.training.finalize` when `open_set.enabled`; also usable on any trainer and featurized labelled set
(e.g. by an `evaluate`/`calibrate` command). Out-of-scope rows carry the label id -1 (`data.out_of_scope_label`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..model.open_set_scores import OUT_OF_SCOPE_ID
from .calibration import Calibration, calibrate
from .evaluation import OpenSetStatistics, all_scores, threshold_free_metrics

logger = logging.getLogger(__name__)


def calibrate_model(
    model,
    outputs: dict[str, np.ndarray],
    reference: tuple[torch.Tensor, torch.Tensor],
    settings: Any,
) -> tuple[Calibration, dict[str, float]]:
    """Fit the scores' statistics on `reference` (training embeddings, class ids), calibrate on `outputs`
    (`dataset_outputs` of validation rows), store the chosen rule in `model` (`set_open_set`); returns the
    calibration and its metrics (`open_set_*`, and `oos_auroc_*`/`oos_fpr95_*` with out-of-scope rows).
    `settings`: the `open_set` config section."""
    rows = outputs["ce"].astype(bool) | (outputs["labels"] == OUT_OF_SCOPE_ID)
    logits, labels = outputs["logits"][rows], outputs["labels"][rows]
    ref_emb, ref_labels = (t.detach().float().cpu().numpy() for t in reference)
    stats = OpenSetStatistics.fit(ref_emb, ref_labels, model.config.num_labels, settings.mahalanobis_ridge)
    scores = all_scores(
        logits,
        outputs["embeddings"][rows],
        stats,
        labels,
        outputs["head_logits"][rows],
        settings.energy_temperature,
    )
    criterion = None if settings.criterion == "auto" else settings.criterion
    result = calibrate(scores, logits, labels, settings.score, criterion, settings.target)
    model.config.open_set_energy_temperature = settings.energy_temperature
    model.set_open_set(
        result.score,
        result.threshold,
        stats.fusion_stats,
        torch.as_tensor(stats.means),
        torch.as_tensor(stats.precision),
    )
    metrics = {f"open_set_{k}": v for k, v in result.metrics.items() if not np.isnan(v)}
    if (labels == OUT_OF_SCOPE_ID).any():
        metrics.update(threshold_free_metrics(scores, labels))
    logger.info(
        "open set: score %s, threshold %.6g (%s): %s", result.score, result.threshold, result.criterion, metrics
    )
    return result, metrics
