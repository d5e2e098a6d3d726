"""From a checked config and prepared data to the model and the trainer: the one place that maps config
sections to the constructor arguments of `MetricClassifierModel` and `MetricClassifierTrainer`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..config import TrainConfig
from ..data.groups import class_group_ids, class_group_names, group_class_margins
from ..errors import ConfigError

PLOTS_DIR = "plots"
"""Evaluation pictures go to `<checkpoints_dir>/plots/`."""


def check_data_for_config(cfg: TrainConfig, data) -> None:
    """The settings that need a `group` column, checked once the data is known."""
    from ..evaluation.names import GROUP_METRICS

    if data.class_groups is not None:
        return
    path = data.summary.get("source") or cfg.data.parquet_path
    name = cfg.checkpointing.save_best_by.removeprefix("eval_")
    problems = (
        (name in GROUP_METRICS, f"checkpointing.save_best_by: {name} needs a 'group' column in {path}"),
        (cfg.head.group_margin is not None, f"head.group_margin: {path} has no 'group' column"),
        (
            bool(cfg.loss.metric.options.get("same_group_first")),
            f"loss.metric.same_group_first: {path} has no 'group' column",
        ),
        (cfg.training.sampler == "group_pk", f"training.sampler: group_pk needs a 'group' column in {path}"),
    )
    for found, message in problems:
        if found:
            raise ConfigError(message)


def build_model(cfg: TrainConfig, data, model_path: str | None, modality: str):
    """A new `MetricClassifierModel` for `data`'s labels: the pretrained backbone at `model_path`, or a random
    one from `cfg.model_config`; the new head and projection start from the run's seed."""
    from transformers import set_seed

    from ..model.modeling import MetricClassifierModel

    class_margins = None
    margins = cfg.head.group_margin
    if margins is not None:
        class_margins = group_class_margins(data.class_groups, margins.same, margins.default)
    pair_margin = margins.same_group_pair if margins else 0.0
    group_first = bool(cfg.loss.metric.options.get("same_group_first"))
    group_ids = class_group_ids(data.class_groups, len(data.id2label)) if pair_margin or group_first else None
    set_seed(cfg.training.seed)
    model_kwargs = dict(
        **cfg.model.model_config(),
        head_type=cfg.head.type,
        head_kwargs=cfg.head.head_kwargs(),
        class_margins=class_margins,
        **cfg.loss.model_config(),
        class_group_ids=group_ids,
        same_group_pair_margin=pair_margin,
        modality=modality,
        out_of_scope_label=cfg.data.out_of_scope_label or "oos",
        out_of_scope_negatives=cfg.open_set.train_with_oos,
        outlier_exposure_weight=cfg.open_set.outlier_exposure_weight,
        knn_index=dataclasses.asdict(cfg.model.knn_index) if cfg.model.knn_index is not None else None,
    )
    if cfg.model_config is not None:  # from scratch: random init (see `model_config`)
        return MetricClassifierModel.from_scratch(cfg.model_config, data.id2label, **model_kwargs)
    attention = cfg.training.attention_implementation
    return MetricClassifierModel.from_backbone(model_path, data.id2label, attn_implementation=attention, **model_kwargs)


def group_sampling(cfg: TrainConfig, data):
    """`training.sampler: group_pk` (and its curriculum) from the data's groups; None for the other samplers."""
    from .curriculum import CurriculumSettings, HardGroupCurriculum
    from .group_sampler import GroupSampling

    t = cfg.training
    if t.sampler != "group_pk":
        return None
    names = class_group_names(data.class_groups, len(data.id2label))
    m = t.hard_group_mining
    curriculum = None
    if m is not None:
        curriculum = HardGroupCurriculum(CurriculumSettings(m.start_epoch, m.max_oversample, m.min_weight))
    groups = {c: g for c, g in enumerate(names) if g is not None}
    return GroupSampling(groups, t.groups_per_batch, t.group_mix, curriculum)


def build_evaluator(cfg: TrainConfig, model, data, output_dir: str):
    """The validation of the run: the built-in evaluators with the config's settings, then the user's."""
    from ..evaluation.base import build_evaluators
    from ..evaluation.evaluator import MetricEvaluator, PlotSettings, RetrievalSettings

    mv = cfg.metric_validation
    return MetricEvaluator(
        model.objective,
        RetrievalSettings(tuple(mv.recall_at_k), mv.distance, mv.knn_k),
        PlotSettings(os.path.join(output_dir, PLOTS_DIR), mv.embedding_map) if mv.plots else None,
        class_names=model.config.id2label,
        class_counts=data.train_class_counts(),
        class_groups=data.class_groups,
        always_fail_min_rows=mv.always_fail_min_rows,
        extra=build_evaluators(mv.evaluators),
    )


def build_trainer(cfg: TrainConfig, args: Any, data, model, featurizer):
    """The `MetricClassifierTrainer` of the run (with the Neptune tracker when configured)."""
    from .trainer import MetricClassifierTrainer

    t, mv = cfg.training, cfg.metric_validation
    trainer = MetricClassifierTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=featurizer.processor,
        data_collator=featurizer.collator(),
        samples_per_class=t.samples_per_class if t.sampler in ("pk", "group_pk") else None,
        length_grouping=t.groups_lengths(featurizer.input_column),
        evaluator=build_evaluator(cfg, model, data, args.output_dir),
        bank_steps=mv.keep_last_n_emb_steps,
        distributed_metric_loss=t.distributed_metric_loss,
        head_lr_multiplier=cfg.optimizer.head_lr_multiplier,
        layerwise_lr_decay=cfg.optimizer.layerwise_lr_decay,
        collapse_check_steps=t.collapse_every,
        bank_negatives=(t.bank_negatives.size, t.bank_negatives.start_step) if t.bank_negatives else None,
        max_nonfinite_steps=t.max_nonfinite_steps,
        group_sampling=group_sampling(cfg, data),
    )
    if cfg.neptune.mode != "disabled":
        from .tracking import NeptuneTracker

        trainer.add_callback(NeptuneTracker(cfg.neptune, cfg.to_dict()))
    return trainer
