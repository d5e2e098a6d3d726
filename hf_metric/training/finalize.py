"""After training: what turns the best checkpoint into a model to ship.

In order (`finalize`): the final validation; the training reference stored in the model and the kNN-fused
classifier validated (`model.knn_fusion_weight`); the open-set rule calibrated on the validation split
(`open_set`); the best model saved to `<checkpoints_dir>/best` with its head file and model card (pushed to the Hub
if configured); metrics.json, group_analysis.json and report.md written; the trackers closed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..config import TrainConfig

logger = logging.getLogger(__name__)

FUSED_METRICS = ("loss", "accuracy", "f1", "top5_accuracy")
"""Metrics of the kNN-fused classifier reported next to the head's own (prefix `eval_fused_`)."""


def finalize(trainer, cfg: TrainConfig, data) -> dict[str, float]:
    """Everything after `trainer.train()`; returns the final metrics (see the module docstring)."""
    from ..atomic import write_json_atomic
    from ..evaluation.report import write_report
    from ..evaluation.tables import format_metrics_table

    metrics = trainer.evaluate()
    if cfg.model.knn_fusion_weight > 0 and cfg.model.store_knn_reference:
        metrics.update(add_knn_reference(trainer, cfg))
    elif cfg.model.knn_fusion_weight > 0:
        logger.warning("model.store_knn_reference is false: no training rows stored, so no kNN fusion")
    if cfg.open_set.enabled:
        metrics.update(add_open_set(trainer, cfg))
    out_dir = cfg.checkpointing.checkpoints_dir
    best_dir = os.path.join(out_dir, "best")
    trainer.save_final_model(best_dir)
    if trainer.is_world_process_zero():
        write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
        sections = group_sections(trainer, out_dir) + open_set_sections(trainer)
        report = write_report(out_dir, metrics, trainer.latest_plots, cfg.to_yaml(), sections)
        print("\nFinal validation metrics (best checkpoint):\n" + format_metrics_table(metrics), flush=True)
        finish_best_model(trainer, cfg, best_dir, metrics, data.summary)
        print(f"Report: {report}", flush=True)
        finish_trackers(trainer, report, best_dir)
    return metrics


def store_training_reference(trainer, cfg: TrainConfig) -> None:
    """Store the trained model's embeddings of (at most `knn_reference_max_rows`, seeded) training rows in the
    model (kNN fusion, the kNN pipeline and the open-set scores use them); known out-of-scope rows
    (`open_set.train_with_oos`) are no class and stay out."""
    import numpy as np
    import torch

    from ..data.prepare import labels_of
    from .outputs import dataset_outputs

    dataset = trainer.train_dataset
    in_scope = labels_of(dataset) >= 0
    if not in_scope.all():
        dataset = dataset.select(np.flatnonzero(in_scope))
    limit = cfg.model.knn_reference_max_rows
    if len(dataset) > limit:
        rng = np.random.default_rng(cfg.training.seed)
        dataset = dataset.select(np.sort(rng.choice(len(dataset), size=limit, replace=False)))
    outputs = dataset_outputs(trainer, dataset)
    embeddings, labels = torch.from_numpy(outputs["embeddings"]), torch.from_numpy(outputs["labels"])
    trainer.accelerator.unwrap_model(trainer.model).set_knn_reference(embeddings, labels)


def add_knn_reference(trainer, cfg: TrainConfig) -> dict[str, float]:
    """Store the training reference for kNN fusion and return the fused classifier's validation metrics."""
    store_training_reference(trainer, cfg)
    fused = trainer.evaluate(metric_key_prefix="eval_fused")
    return {f"eval_fused_{k}": fused[f"eval_fused_{k}"] for k in FUSED_METRICS if f"eval_fused_{k}" in fused}


def add_open_set(trainer, cfg: TrainConfig) -> dict[str, float]:
    """Calibrate the open-set rejection on the validation split (`open_set` section) and store the rule in the
    model; returns the calibration's metrics (`eval_open_set_*`, `eval_oos_*`)."""
    from ..open_set.model_rule import calibrate_model
    from .outputs import dataset_outputs

    model = trainer.accelerator.unwrap_model(trainer.model)
    if model.config.knn_reference_size == 0:
        store_training_reference(trainer, cfg)
    outputs = dataset_outputs(trainer, trainer.eval_dataset)
    reference = (model.knn_reference_embeddings, model.knn_reference_labels)
    calibration, metrics = calibrate_model(model, outputs, reference, cfg.open_set)
    print(f"Open set: {calibration.describe()}", flush=True)
    return {f"eval_{k}": v for k, v in metrics.items()}


def open_set_sections(trainer) -> list[str]:
    """The report section on how the open-set rule was chosen (none without a calibrated rule)."""
    from ..open_set.model_rule import calibration_markdown

    config = trainer.accelerator.unwrap_model(trainer.model).config
    section = calibration_markdown(getattr(config, "open_set_calibration", None))
    return [section] if section else []


def finish_best_model(
    trainer, cfg: TrainConfig, best_dir: str, metrics: dict[str, float], data_summary: dict[str, Any]
) -> None:
    """Make `best_dir` shareable (main process only): its head as `head.safetensors` and the model card as
    README.md; then upload it if `hub.push_to_hub`."""
    from ..sharing.head_io import export_head
    from ..sharing.hub import build_model_card, last_training_losses, push_to_hub, write_model_card

    export_head(best_dir)
    id2label = trainer.accelerator.unwrap_model(trainer.model).config.id2label
    losses = last_training_losses(trainer.state.log_history)
    card = build_model_card(cfg, metrics, data_summary, losses, id2label, folder=best_dir)
    write_model_card(best_dir, card)
    if cfg.hub.push_to_hub:
        url = push_to_hub(best_dir, cfg.hub)
        print(f"Pushed {best_dir} to {cfg.hub.model_id}: {url}", flush=True)


def group_sections(trainer, out_dir: str) -> list[str]:
    """The final error analysis by group: `group_analysis.json` (its tables) and a report.md section."""
    from ..atomic import write_json_atomic
    from ..evaluation.groups import analysis_markdown

    analysis = trainer.latest_group_analysis
    if analysis is None:
        return []
    id2label = trainer.accelerator.unwrap_model(trainer.model).config.id2label
    tables = {
        "metrics": analysis.metrics,
        "per_group": {g: {"accuracy": a, "rows": n, "errors": e} for g, (a, n, e) in analysis.per_group.items()},
        "always_failing_classes": [id2label[c] for c in analysis.failing_classes],
        "confused_pairs": [[id2label[a], id2label[b], n, same] for a, b, n, same in analysis.pairs],
    }
    write_json_atomic(os.path.join(out_dir, "group_analysis.json"), tables)
    return [analysis_markdown(analysis, id2label)]


def finish_trackers(trainer, report_path: str, best_dir: str) -> None:
    from .tracking import NeptuneTracker

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, NeptuneTracker):
            callback.finish(report_path, best_dir)
