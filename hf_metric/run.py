"""One training run from a validated config: data -> model -> trainer -> best model, metrics and report."""

from __future__ import annotations

import logging
import os
from typing import Any

from .config import TrainConfig
from .errors import ConfigError
from .evaluation.tables import format_metrics_table
from .packaged_models import resolve_model_path

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
"""Evaluation pictures go to `<checkpoints_dir>/plots/`."""


def _resume_checkpoint(cfg: TrainConfig) -> str | None:
    """`resume_from`: a checkpoint folder, or `latest` for the newest complete one in checkpoints_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    target = cfg.training.resume_from
    if target is None:
        return None
    if target == "latest":
        folder = cfg.checkpointing.checkpoints_dir
        last = get_last_checkpoint(folder) if os.path.isdir(folder) else None
        if last is None:
            raise ConfigError(f"training.resume_from: no checkpoint found in {folder}")
        return last
    if not os.path.isfile(os.path.join(target, "trainer_state.json")):
        raise ConfigError(f"training.resume_from: {target} is not a checkpoint folder (no trainer_state.json)")
    return target


def _check_precision(cfg: TrainConfig) -> None:
    import torch

    if cfg.training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("training.mixed_precision: fp16 needs a GPU; use bf16 (or no) on CPU")


def build_trainer(cfg: TrainConfig, **argument_overrides: Any):
    """Everything up to `trainer.train()`: tokenizer, data, model and the configured trainer."""
    return build_run(cfg, **argument_overrides)[0]


def build_run(cfg: TrainConfig, **argument_overrides: Any):
    """`(trainer, prepared data)`: the trainer of `build_trainer` and the data it was built from."""
    from transformers import set_seed

    from .data.featurize import featurizer_for
    from .data.parquet import TEXT_COLUMN, group_class_margins
    from .data.prepare import prepare_datasets
    from .evaluation.evaluator import MetricEvaluator, PlotSettings, RetrievalSettings
    from .model.modeling import MetricClassifierModel
    from .training.arguments import build_training_arguments
    from .training.trainer import MetricClassifierTrainer

    _check_precision(cfg)
    args = build_training_arguments(cfg, **argument_overrides)
    model_path = resolve_model_path(cfg.model_name)
    featurizer = featurizer_for(model_path, TEXT_COLUMN, cfg.training.max_seq_length)
    with args.main_process_first(desc="prepare data"):
        data = prepare_datasets(cfg.data, featurizer, cfg.training.seed)
    t, mv = cfg.training, cfg.metric_validation
    class_margins = None
    if cfg.head.group_margin is not None:
        if data.class_groups is None:
            raise ConfigError(f"head.group_margin: {cfg.data.parquet_path} has no 'group' column")
        margins = cfg.head.group_margin
        class_margins = group_class_margins(data.class_groups, margins.same, margins.default)
    set_seed(t.seed)  # the new head and projection start from the same weights in every run
    model = MetricClassifierModel.from_backbone(
        model_path,
        data.id2label,
        attn_implementation=t.attention_implementation,
        pooling=cfg.model.pooling,
        projection_dim=cfg.model.projection_dim,
        classifier_dropout=cfg.model.classifier_dropout,
        knn_fusion_weight=cfg.model.knn_fusion_weight,
        knn_fusion_k=cfg.model.knn_fusion_k,
        knn_fusion_temperature=cfg.model.knn_fusion_temperature,
        head_type=cfg.head.type,
        head_kwargs=cfg.head.head_kwargs(),
        class_margins=class_margins,
        classification_loss=t.classification_loss,
        classification_loss_kwargs=t.classification_loss_kwargs(),
        classification_loss_weight=t.classification_loss_weight,
        metric_loss_weight=t.metric_loss_weight,
        metric_loss=t.metric_loss,
        metric_loss_kwargs=t.metric_loss_kwargs(),
    )
    trainer = MetricClassifierTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=featurizer.processor,
        data_collator=featurizer.collator(),
        samples_per_class=t.samples_per_class if t.sampler == "pk" else None,
        evaluator=MetricEvaluator(
            model.objective,
            RetrievalSettings(tuple(mv.recall_at_k), mv.distance, mv.knn_k),
            PlotSettings(os.path.join(args.output_dir, PLOTS_DIR), mv.embedding_map) if mv.plots else None,
            class_names=model.config.id2label,
        ),
        bank_steps=mv.keep_last_n_emb_steps,
        distributed_metric_loss=t.distributed_metric_loss,
        head_lr_multiplier=cfg.optimizer.head_lr_multiplier,
        layerwise_lr_decay=cfg.optimizer.layerwise_lr_decay,
        collapse_check_steps=t.collapse_every,
    )
    if cfg.neptune.mode != "disabled":
        from .training.tracking import NeptuneTracker

        trainer.add_callback(NeptuneTracker(cfg.neptune, cfg.to_dict()))
    return trainer, data


FUSED_METRICS = ("loss", "accuracy", "f1", "top5_accuracy")
"""Metrics of the kNN-fused classifier reported next to the head's own (prefix `eval_fused_`)."""


def add_knn_reference(trainer, cfg: TrainConfig) -> dict[str, float]:
    """Store the trained model's embeddings of (at most `knn_reference_max_rows`, seeded) training rows in the
    model for kNN fusion, and return the fused classifier's validation metrics."""
    import numpy as np

    dataset = trainer.train_dataset
    limit = cfg.model.knn_reference_max_rows
    if len(dataset) > limit:
        rng = np.random.default_rng(cfg.training.seed)
        dataset = dataset.select(np.sort(rng.choice(len(dataset), size=limit, replace=False)))
    embeddings, labels = trainer.embed_dataset(dataset)
    trainer.accelerator.unwrap_model(trainer.model).set_knn_reference(embeddings, labels)
    fused = trainer.evaluate(metric_key_prefix="eval_fused")
    return {f"eval_fused_{k}": fused[f"eval_fused_{k}"] for k in FUSED_METRICS if f"eval_fused_{k}" in fused}


def finish_best_model(
    trainer, cfg: TrainConfig, best_dir: str, metrics: dict[str, float], data_summary: dict[str, Any]
) -> None:
    """Make `best_dir` shareable (main process only): its head as `head.safetensors` and the model card as
    README.md; then upload it if `hub.push_to_hub`."""
    from .sharing.head_io import export_head
    from .sharing.hub import build_model_card, last_training_losses, push_to_hub, write_model_card

    export_head(best_dir)
    id2label = trainer.accelerator.unwrap_model(trainer.model).config.id2label
    losses = last_training_losses(trainer.state.log_history)
    card = build_model_card(cfg, metrics, data_summary, losses, id2label, folder=best_dir)
    write_model_card(best_dir, card)
    if cfg.hub.push_to_hub:
        url = push_to_hub(best_dir, cfg.hub)
        print(f"Pushed {best_dir} to {cfg.hub.model_id}: {url}", flush=True)


def train(cfg: TrainConfig) -> dict[str, float]:
    """Train, evaluate the best model, save it to `<checkpoints_dir>/best` (with its head file and model card,
    pushed to the Hub if configured) and return the final metrics."""
    from .atomic import write_json_atomic
    from .evaluation.report import write_report

    resume = _resume_checkpoint(cfg)
    trainer, data = build_run(cfg)
    out_dir = cfg.checkpointing.checkpoints_dir
    if trainer.is_world_process_zero():
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "resolved_config.yaml"), "w", encoding="utf-8") as fh:
            fh.write(cfg.to_yaml())
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    if cfg.model.knn_fusion_weight > 0 and cfg.model.store_knn_reference:
        metrics.update(add_knn_reference(trainer, cfg))
    elif cfg.model.knn_fusion_weight > 0:
        logger.warning("model.store_knn_reference is false: no training rows stored, so no kNN fusion")
    best_dir = os.path.join(out_dir, "best")
    trainer.save_final_model(best_dir)
    if trainer.is_world_process_zero():
        write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
        report = write_report(out_dir, metrics, trainer.latest_plots, cfg.to_yaml())
        print("\nFinal validation metrics (best checkpoint):\n" + format_metrics_table(metrics), flush=True)
        finish_best_model(trainer, cfg, best_dir, metrics, data.summary)
        print(f"Report: {report}", flush=True)
        _finish_trackers(trainer, report, best_dir)
    return metrics


def _finish_trackers(trainer, report_path: str, best_dir: str) -> None:
    from .training.tracking import NeptuneTracker

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, NeptuneTracker):
            callback.finish(report_path, best_dir)
