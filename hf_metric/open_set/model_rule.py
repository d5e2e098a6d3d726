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
    result = calibrate(scores, logits, labels, settings.score, settings.criterion, settings.target)
    model.config.open_set_energy_temperature = settings.energy_temperature
    model.set_open_set(
        result.score,
        result.threshold,
        stats.fusion_stats,
        torch.as_tensor(stats.means),
        torch.as_tensor(stats.precision),
    )
    model.config.open_set_calibration = result.summary()
    metrics = calibration_metrics(result)
    if (labels == OUT_OF_SCOPE_ID).any():
        metrics.update(threshold_free_metrics(scores, labels))
    logger.info("open set: %s; validation metrics: %s", result.describe(), metrics)
    return result, metrics


def calibration_metrics(result: Calibration) -> dict[str, float]:
    """`open_set_*`: the chosen point's validation metrics and the evidence it was chosen on (row counts)."""
    metrics = {f"open_set_{k}": v for k, v in result.metrics.items() if not np.isnan(v)}
    metrics.update(open_set_validation_in_scope_rows=result.in_scope_rows, open_set_validation_oos_rows=result.oos_rows)
    return metrics


def calibration_markdown(calibration: dict | None) -> str:
    """The report section on a stored rule's choice (`open_set_calibration` of a model config); empty without."""
    if not calibration:
        return ""
    target = calibration.get("target")
    lines = [
        "## Open-set rule",
        "",
        "| score | threshold | criterion | target | in-scope rows | out-of-scope rows |",
        "|---|---|---|---|---|---|",
        f"| {calibration['score']} | {calibration['threshold']:.6g} | {calibration['criterion']} | "
        f"{'' if target is None else f'{target:g}'} | {calibration['in_scope_rows']} | {calibration['oos_rows']} |",
    ]
    if calibration.get("reason"):
        lines += ["", f"Why: {calibration['reason']}."]
    return "\n".join(lines) + "\n"
