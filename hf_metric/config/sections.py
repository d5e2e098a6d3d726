"""The sections of the YAML config that describe the model, the data and the training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..optional import available
from .schema import check as _check


@dataclass
class ModelSection:
    """How the backbone output becomes an embedding."""

    pooling: Literal["mean", "cls", "pooler"] = "mean"
    projection_dim: int | None = None
    classifier_dropout: float = 0.1
    knn_fusion_weight: float = 0.0
    knn_fusion_k: int = 10
    knn_fusion_temperature: float = 0.05
    knn_reference_max_rows: int = 100_000
    store_knn_reference: bool = True
    """Store training rows' embeddings in the weights for kNN fusion; false drops them (and the fusion) so that
    a shared model holds nothing derived from individual training rows."""

    def validate(self) -> None:
        _check(self.projection_dim is None or self.projection_dim > 0, "model.projection_dim", "must be > 0")
        _check(0.0 <= self.classifier_dropout < 1.0, "model.classifier_dropout", "must be in [0, 1)")
        _check(0.0 <= self.knn_fusion_weight <= 1.0, "model.knn_fusion_weight", "must be in [0, 1]")
        _check(self.knn_fusion_k >= 1, "model.knn_fusion_k", "must be >= 1")
        _check(self.knn_fusion_temperature > 0, "model.knn_fusion_temperature", "must be > 0")
        _check(self.knn_reference_max_rows >= 1, "model.knn_reference_max_rows", "must be >= 1")


@dataclass
class GroupMarginSection:
    """Per-class margins from the data's `group` column: classes sharing a group get the larger `same`."""

    same: float = 0.7
    default: float = 0.5

    def validate(self) -> None:
        _check(self.same >= 0 and self.default >= 0, "head.group_margin", "margins must be >= 0")


MARGIN_HEADS = ("arcface", "subcenter_arcface", "cosface", "circle")
SCALED_HEADS = ("cosine", *MARGIN_HEADS)


@dataclass
class HeadSection:
    """The classification head. `null` keeps the head's own default (see hf_metric.heads.HEADS)."""

    type: Literal["linear", "cosine", "arcface", "subcenter_arcface", "cosface", "circle"] = "linear"
    scale: float | None = None
    margin: float | None = None
    easy_margin: bool = False
    sub_centers: int | None = None
    temperature: float = 1.0
    group_margin: GroupMarginSection | None = None

    def validate(self) -> None:
        _check(self.temperature > 0, "head.temperature", "must be > 0")
        _check(self.scale is None or self.scale > 0, "head.scale", "must be > 0")
        _check(self.sub_centers is None or self.sub_centers >= 1, "head.sub_centers", "must be >= 1")
        for key, allowed in (("scale", SCALED_HEADS), ("margin", MARGIN_HEADS), ("sub_centers", SCALED_HEADS)):
            _check(
                getattr(self, key) is None or self.type in allowed,
                f"head.{key}",
                f"has no meaning for head.type {self.type!r} (used by: {', '.join(allowed)})",
            )
        _check(
            not self.easy_margin or self.type in ("arcface", "subcenter_arcface"),
            "head.easy_margin",
            "applies to arcface and subcenter_arcface only",
        )
        if self.group_margin is not None:
            _check(self.type in MARGIN_HEADS, "head.group_margin", f"needs a margin head ({', '.join(MARGIN_HEADS)})")
            self.group_margin.validate()

    def head_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the chosen head (circle calls its scale `gamma` and its margin `m`)."""
        kwargs: dict[str, Any] = {"temperature": self.temperature}
        names = {"scale": "gamma", "margin": "m"} if self.type == "circle" else {}
        for key in ("scale", "margin", "sub_centers"):
            if getattr(self, key) is not None:
                kwargs[names.get(key, key)] = getattr(self, key)
        if self.easy_margin:
            kwargs["easy_margin"] = True
        return kwargs


@dataclass
class DataSection:
    parquet_path: str = ""
    val_ratio: float = 0.1
    num_workers: int = 0
    upsample: int | None = None
    downsample: int | None = None

    def validate(self) -> None:
        _check(bool(self.parquet_path), "data.parquet_path", "is required")
        _check(0.0 < self.val_ratio < 1.0, "data.val_ratio", f"must be in (0, 1), got {self.val_ratio}")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.upsample is None or self.upsample > 0, "data.upsample", "must be > 0 or null")
        _check(self.downsample is None or self.downsample > 0, "data.downsample", "must be > 0 or null")
        if self.upsample is not None and self.downsample is not None:
            _check(
                self.upsample <= self.downsample,
                "data.upsample",
                f"({self.upsample}) must not exceed data.downsample ({self.downsample})",
            )


@dataclass
class TrainingSection:
    batch_size: int = 32
    num_epochs: float = 3.0
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 128
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    attention_implementation: str | None = None
    gradient_clip_val: float | None = 1.0
    seed: int = 42
    resume_from: str | None = None
    supcon_temperature: float = 0.1
    classification_loss_weight: float = 1.0
    metric_loss_weight: float = 1.0
    classification_loss: Literal["ce", "focal"] = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float | list[float] | None = None
    metric_loss: Literal["supcon", "triplet", "multi_similarity"] = "supcon"
    triplet_margin: float = 0.2
    ms_alpha: float = 2.0
    ms_beta: float = 50.0
    ms_base: float = 0.5
    sampler: Literal["pk", "random"] = "pk"
    samples_per_class: int = 4
    distributed_metric_loss: Literal["global", "local_anchors"] = "global"
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=lambda: ["none"])
    collapse_check_steps: int | None = None

    def validate(self) -> None:
        _check(self.batch_size > 0, "training.batch_size", "must be > 0")
        _check(self.num_epochs > 0, "training.num_epochs", "must be > 0")
        _check(self.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps", "must be >= 1")
        _check(self.max_seq_length >= 2, "training.max_seq_length", "must be >= 2")
        _check(
            self.gradient_clip_val is None or self.gradient_clip_val > 0,
            "training.gradient_clip_val",
            "must be > 0 or null",
        )
        _check(self.supcon_temperature > 0, "training.supcon_temperature", "must be > 0")
        for name in ("classification_loss_weight", "metric_loss_weight"):
            _check(getattr(self, name) >= 0, f"training.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(
            self.classification_loss_weight > 0 or self.metric_loss_weight > 0,
            "training.metric_loss_weight",
            "and training.classification_loss_weight are both 0: nothing to train",
        )
        _check(0.0 <= self.label_smoothing < 1.0, "training.label_smoothing", "must be in [0, 1)")
        _check(self.focal_gamma >= 0, "training.focal_gamma", "must be >= 0")
        if self.label_smoothing and self.classification_loss != "ce":
            raise ConfigError("training.label_smoothing: applies to classification_loss 'ce' only")
        _check(self.triplet_margin >= 0, "training.triplet_margin", "must be >= 0")
        _check(self.ms_alpha > 0 and self.ms_beta > 0, "training.ms_alpha", "ms_alpha and ms_beta must be > 0")
        _check(self.samples_per_class >= 1, "training.samples_per_class", "must be >= 1")
        if self.sampler == "pk":
            _check(
                self.batch_size % self.samples_per_class == 0,
                "training.batch_size",
                f"({self.batch_size}) must be a multiple of training.samples_per_class "
                f"({self.samples_per_class}) for P x K batches",
            )
        _check(self.logging_steps >= 1, "training.logging_steps", "must be >= 1")
        _check(
            self.collapse_check_steps is None or self.collapse_check_steps >= 1,
            "training.collapse_check_steps",
            "must be >= 1 or null (null: every logging_steps)",
        )
        _check(
            "neptune" not in self.report_to,
            "training.report_to",
            "neptune is configured in the neptune: section (transformers' NeptuneCallback is deprecated)",
        )

    def resolved_report_to(self) -> list[str]:
        """`report_to` for `TrainingArguments`: "all" is expanded here without neptune, which hf_metric logs to
        itself (see the `neptune` section)."""
        if "all" not in self.report_to:
            return list(self.report_to)
        from transformers.integrations import get_available_reporting_integrations

        return [name for name in get_available_reporting_integrations() if name != "neptune"]

    @property
    def collapse_every(self) -> int:
        """Optimizer steps between two collapse checks on the training batch."""
        return self.collapse_check_steps or self.logging_steps

    def classification_loss_kwargs(self) -> dict[str, Any]:
        if self.classification_loss == "focal":
            return {"gamma": self.focal_gamma, "alpha": self.focal_alpha}
        return {"label_smoothing": self.label_smoothing}

    def metric_loss_kwargs(self) -> dict[str, Any]:
        return {
            "supcon": {"temperature": self.supcon_temperature},
            "triplet": {"margin": self.triplet_margin},
            "multi_similarity": {"alpha": self.ms_alpha, "beta": self.ms_beta, "base": self.ms_base},
        }[self.metric_loss]


@dataclass
class OptimizerSection:
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    head_lr_multiplier: float = 1.0
    layerwise_lr_decay: float = 1.0

    def validate(self) -> None:
        _check(self.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
        _check(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
        _check(self.head_lr_multiplier > 0, "optimizer.head_lr_multiplier", "must be > 0")
        _check(0 < self.layerwise_lr_decay <= 1, "optimizer.layerwise_lr_decay", "must be in (0, 1]")


@dataclass
class SchedulerSection:
    name: str = "linear"
    warmup_steps: float = 0.0
    num_training_steps: int | None = None
    num_cycles: float = 0.5

    def validate(self) -> None:
        from transformers.trainer_utils import SchedulerType

        names = [s.value for s in SchedulerType]
        _check(self.name in names, "scheduler.name", f"must be one of {names}, got {self.name!r}")
        _check(self.warmup_steps >= 0, "scheduler.warmup_steps", "must be >= 0 (a value < 1 is a ratio)")
        _check(
            self.warmup_steps < 1 or float(self.warmup_steps).is_integer(),
            "scheduler.warmup_steps",
            "must be a whole number of steps, or a ratio in [0, 1)",
        )
        _check(
            self.num_training_steps is None or self.num_training_steps > 0,
            "scheduler.num_training_steps",
            "must be > 0 or null",
        )
        _check(self.num_cycles > 0, "scheduler.num_cycles", "must be > 0")


@dataclass
class CheckpointingSection:
    checkpoints_dir: str = "checkpoints"
    save_every_n_batches: int | None = None
    save_best_by: str = "loss"
    save_total_limit: int = 2

    def validate(self) -> None:
        _check(
            self.save_every_n_batches is None or self.save_every_n_batches > 0,
            "checkpointing.save_every_n_batches",
            "must be > 0 or null (null: once per epoch)",
        )
        _check(self.save_total_limit >= 1, "checkpointing.save_total_limit", "must be >= 1")


@dataclass
class MetricValidationSection:
    recall_at_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    distance: Literal["cos", "l2"] = "cos"
    knn_k: int = 10
    keep_last_n_emb_steps: int = 50
    plots: bool = True
    embedding_map: Literal["pca", "umap"] = "pca"

    def validate(self) -> None:
        _check(len(self.recall_at_k) > 0, "metric_validation.recall_at_k", "must list at least one K")
        _check(all(k > 0 for k in self.recall_at_k), "metric_validation.recall_at_k", "every K must be > 0")
        _check(self.knn_k > 0, "metric_validation.knn_k", "must be > 0")
        _check(self.keep_last_n_emb_steps > 0, "metric_validation.keep_last_n_emb_steps", "must be > 0")
        if self.plots and self.embedding_map == "umap":
            _check(
                available("umap"), "metric_validation.embedding_map", "umap needs `pip install umap-learn` (or: pca)"
            )
