"""One training run from a validated config: data -> model -> trainer -> best model, metrics and report."""

from __future__ import annotations

import dataclasses
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


def _group_sampling(cfg: TrainConfig, data):
    """`training.sampler: group_pk` (and its curriculum) from the data's groups; None for the other samplers."""
    from .evaluation.groups import class_group_names
    from .training.curriculum import CurriculumSettings, HardGroupCurriculum
    from .training.group_sampler import GroupSampling

    t = cfg.training
    if t.sampler != "group_pk":
        return None
    if data.class_groups is None:
        raise ConfigError(f"training.sampler: group_pk needs a 'group' column in {cfg.data.parquet_path}")
    names = class_group_names(data.class_groups, len(data.id2label))
    m = t.hard_group_mining
    curriculum = None
    if m is not None:
        curriculum = HardGroupCurriculum(CurriculumSettings(m.start_epoch, m.max_oversample, m.min_weight))
    groups = {c: g for c, g in enumerate(names) if g is not None}
    return GroupSampling(groups, t.groups_per_batch, t.group_mix, curriculum)


def _check_group_metric(cfg: TrainConfig, data) -> None:
    """`save_best_by` may name a group metric only when the data has groups to analyse."""
    from .evaluation.names import GROUP_METRICS

    name = cfg.checkpointing.save_best_by.removeprefix("eval_")
    if name in GROUP_METRICS and data.class_groups is None:
        raise ConfigError(f"checkpointing.save_best_by: {name} needs a 'group' column in {cfg.data.parquet_path}")


def _class_group_ids(data) -> list[int]:
    """Group index of each class id (-1: none), for the pair-wise same-group margin and same-group-first mining."""
    from .evaluation.groups import class_group_names

    names = class_group_names(data.class_groups, len(data.id2label))
    index = {g: i for i, g in enumerate(sorted({n for n in names if n is not None}))}
    return [index.get(n, -1) for n in names]


def build_trainer(cfg: TrainConfig, **argument_overrides: Any):
    """Everything up to `trainer.train()`: tokenizer, data, model and the configured trainer."""
    return build_run(cfg, **argument_overrides)[0]


def build_run(cfg: TrainConfig, **argument_overrides: Any):
    """`(trainer, prepared data)`: the trainer of `build_trainer` and the data it was built from."""
    from transformers import set_seed

    from .data.featurize import FeaturizerSettings, featurizer_for
    from .data.parquet import group_class_margins, input_column_of
    from .data.prepare import prepare_datasets
    from .evaluation.base import build_evaluators
    from .evaluation.evaluator import MetricEvaluator, PlotSettings, RetrievalSettings
    from .model.modeling import MetricClassifierModel
    from .training.arguments import build_training_arguments
    from .training.trainer import MetricClassifierTrainer

    _check_precision(cfg)
    args = build_training_arguments(cfg, **argument_overrides)
    input_column = input_column_of(cfg.data.parquet_path)
    model_path = None if cfg.model_config is not None else resolve_model_path(cfg.model_name)
    model_type = (cfg.model_config or {}).get("model_type")
    settings = FeaturizerSettings(cfg.training.max_seq_length, cfg.data, model_type, cfg.processor_config)
    featurizer = featurizer_for(model_path, input_column, settings=settings)
    with args.main_process_first(desc="prepare data"):
        data = prepare_datasets(cfg.data, featurizer, cfg.training.seed, train_with_oos=cfg.open_set.train_with_oos)
    t, mv = cfg.training, cfg.metric_validation
    _check_group_metric(cfg, data)
    class_margins = None
    if cfg.head.group_margin is not None:
        if data.class_groups is None:
            raise ConfigError(f"head.group_margin: {cfg.data.parquet_path} has no 'group' column")
        margins = cfg.head.group_margin
        class_margins = group_class_margins(data.class_groups, margins.same, margins.default)
    pair_margin = cfg.head.group_margin.same_group_pair if cfg.head.group_margin else 0.0
    group_first = bool(cfg.loss.metric.options.get("same_group_first"))
    if group_first and data.class_groups is None:
        raise ConfigError(f"loss.metric.same_group_first: {cfg.data.parquet_path} has no 'group' column")
    group_ids = _class_group_ids(data) if pair_margin or group_first else None
    set_seed(t.seed)  # the new head and projection start from the same weights in every run
    model_kwargs = dict(
        **cfg.model.model_config(),
        head_type=cfg.head.type,
        head_kwargs=cfg.head.head_kwargs(),
        class_margins=class_margins,
        **cfg.loss.model_config(),
        class_group_ids=group_ids,
        same_group_pair_margin=pair_margin,
        modality=input_column,
        out_of_scope_label=cfg.data.out_of_scope_label or "oos",
        out_of_scope_negatives=cfg.open_set.train_with_oos,
        outlier_exposure_weight=cfg.open_set.outlier_exposure_weight,
        knn_index=dataclasses.asdict(cfg.model.knn_index) if cfg.model.knn_index is not None else None,
    )
    if cfg.model_config is not None:  # from scratch: random init (see `model_config`)
        model = MetricClassifierModel.from_scratch(cfg.model_config, data.id2label, **model_kwargs)
    else:
        attention = t.attention_implementation
        model = MetricClassifierModel.from_backbone(
            model_path, data.id2label, attn_implementation=attention, **model_kwargs
        )
    trainer = MetricClassifierTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=featurizer.processor,
        data_collator=featurizer.collator(),
        samples_per_class=t.samples_per_class if t.sampler in ("pk", "group_pk") else None,
        length_grouping=t.length_grouping,
        evaluator=MetricEvaluator(
            model.objective,
            RetrievalSettings(tuple(mv.recall_at_k), mv.distance, mv.knn_k),
            PlotSettings(os.path.join(args.output_dir, PLOTS_DIR), mv.embedding_map) if mv.plots else None,
            class_names=model.config.id2label,
            class_counts=data.train_class_counts(),
            class_groups=data.class_groups,
            always_fail_min_rows=mv.always_fail_min_rows,
            extra=build_evaluators(mv.evaluators),
        ),
        bank_steps=mv.keep_last_n_emb_steps,
        distributed_metric_loss=t.distributed_metric_loss,
        head_lr_multiplier=cfg.optimizer.head_lr_multiplier,
        layerwise_lr_decay=cfg.optimizer.layerwise_lr_decay,
        collapse_check_steps=t.collapse_every,
        bank_negatives=(t.bank_negatives.size, t.bank_negatives.start_step) if t.bank_negatives else None,
        max_nonfinite_steps=t.max_nonfinite_steps,
        group_sampling=_group_sampling(cfg, data),
    )
    if cfg.neptune.mode != "disabled":
        from .training.tracking import NeptuneTracker

        trainer.add_callback(NeptuneTracker(cfg.neptune, cfg.to_dict()))
    return trainer, data


FUSED_METRICS = ("loss", "accuracy", "f1", "top5_accuracy")
"""Metrics of the kNN-fused classifier reported next to the head's own (prefix `eval_fused_`)."""


def store_training_reference(trainer, cfg: TrainConfig) -> None:
    """Store the trained model's embeddings of (at most `knn_reference_max_rows`, seeded) training rows in the
    model (kNN fusion, the kNN pipeline and the open-set scores use them); known out-of-scope rows
    (`open_set.train_with_oos`) are no class and stay out."""
    import numpy as np

    from .data.prepare import labels_of

    dataset = trainer.train_dataset
    in_scope = labels_of(dataset) >= 0
    if not in_scope.all():
        dataset = dataset.select(np.flatnonzero(in_scope))
    limit = cfg.model.knn_reference_max_rows
    if len(dataset) > limit:
        rng = np.random.default_rng(cfg.training.seed)
        dataset = dataset.select(np.sort(rng.choice(len(dataset), size=limit, replace=False)))
    import torch

    from .training.outputs import dataset_outputs

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
    from .training.open_set import calibrate_model
    from .training.outputs import dataset_outputs

    model = trainer.accelerator.unwrap_model(trainer.model)
    if model.config.knn_reference_size == 0:
        store_training_reference(trainer, cfg)
    outputs = dataset_outputs(trainer, trainer.eval_dataset)
    reference = (model.knn_reference_embeddings, model.knn_reference_labels)
    calibration, metrics = calibrate_model(model, outputs, reference, cfg.open_set)
    print(
        f"Open set: score {calibration.score}, threshold {calibration.threshold:.6g} ({calibration.criterion})",
        flush=True,
    )
    return {f"eval_{k}": v for k, v in metrics.items()}


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
    from .atomic import write_json_atomic, write_text_atomic
    from .evaluation.report import write_report
    from .training.checkpoints import check_checkpoint_matches, check_checkpoints_dir, check_free_space

    _check_precision(cfg)
    resume = _resume_checkpoint(cfg)
    out_dir = cfg.checkpointing.checkpoints_dir
    check_checkpoints_dir(out_dir)
    trainer, data = build_run(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    check_free_space(out_dir, model)
    if resume is not None:
        check_checkpoint_matches(resume, model)
    if trainer.is_world_process_zero():
        write_text_atomic(os.path.join(out_dir, "resolved_config.yaml"), cfg.to_yaml())
    _train_refusing_pickles(trainer, resume)
    metrics = trainer.evaluate()
    if cfg.model.knn_fusion_weight > 0 and cfg.model.store_knn_reference:
        metrics.update(add_knn_reference(trainer, cfg))
    elif cfg.model.knn_fusion_weight > 0:
        logger.warning("model.store_knn_reference is false: no training rows stored, so no kNN fusion")
    if cfg.open_set.enabled:
        metrics.update(add_open_set(trainer, cfg))
    best_dir = os.path.join(out_dir, "best")
    trainer.save_final_model(best_dir)
    if trainer.is_world_process_zero():
        write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
        sections = _group_sections(trainer, out_dir)
        report = write_report(out_dir, metrics, trainer.latest_plots, cfg.to_yaml(), sections)
        print("\nFinal validation metrics (best checkpoint):\n" + format_metrics_table(metrics), flush=True)
        finish_best_model(trainer, cfg, best_dir, metrics, data.summary)
        print(f"Report: {report}", flush=True)
        _finish_trackers(trainer, report, best_dir)
    return metrics


def _train_refusing_pickles(trainer, resume: str | None) -> None:
    """`trainer.train`; the Trainer loads a checkpoint's optimizer, scheduler and RNG state with
    `torch.load(weights_only=True)`, which refuses pickles that would run code: say so in one line."""
    import pickle

    try:
        trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError as err:
        if resume is None:
            raise
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"training.resume_from: {resume} holds a pickle that is not plain tensors; refused ({reason})"
        ) from None


def _group_sections(trainer, out_dir: str) -> list[str]:
    """The final error analysis by group: `group_analysis.json` (its tables) and a report.md section."""
    from .atomic import write_json_atomic
    from .evaluation.groups import analysis_markdown

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


def _finish_trackers(trainer, report_path: str, best_dir: str) -> None:
    from .training.tracking import NeptuneTracker

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, NeptuneTracker):
            callback.finish(report_path, best_dir)
