"""The sections of the YAML config that describe the model, the data and the training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..evaluation.ann import KnnIndexSettings
from ..model.configuration import MetricClassifierConfig
from ..optional import available
from .components import check_options
from .media import AudioAugmentSection, ImageAugmentSection
from .schema import at_least as _at_least
from .schema import check as _check

_SAVED = MetricClassifierConfig
"""The saved model's own defaults, which the YAML keeps (all but `knn_fusion_weight`)."""


@dataclass
class KnnIndexSection(KnnIndexSettings):
    """`model.knn_index`: which index the kNN pipeline uses for large references (`evaluation.ann`)."""

    def validate(self) -> None:
        problem = self.problem()
        _check(problem is None, f"model.knn_index.{(problem or '').split(':')[0]}", (problem or "").split(": ", 1)[-1])
        if self.type != "exact" and not available("faiss"):
            raise ConfigError('model.knn_index.type: ivf and hnsw need faiss: pip install "hf_metric[ann]"')


@dataclass
class ModelSection:
    """How the backbone output becomes an embedding. The fields in `MODEL_CONFIG_FIELDS` go into the saved
    `MetricClassifierConfig` as they are."""

    pooling: Literal["mean", "cls", "pooler", "gem"] = _SAVED.pooling
    projection_dim: int | None = _SAVED.projection_dim
    """Size of the projection MLP giving the metric embedding (null: the pooled output itself)."""
    classifier_dropout: float = _SAVED.classifier_dropout
    knn_fusion_weight: float = 0.3
    """At inference, `logits` = log((1 - w) * softmax(head) + w * p_knn) with p_knn the vote of the k nearest
    stored training rows (0: off). Trained models fuse by default; a bare `MetricClassifierConfig` does not."""
    knn_fusion_k: int = _SAVED.knn_fusion_k
    knn_fusion_temperature: float = _SAVED.knn_fusion_temperature
    knn_reference_max_rows: int = 100_000
    gem_p: float = _SAVED.gem_p
    """Exponent of GeM pooling (`pooling: gem`, for convolutional feature maps): 1 is the mean, large p the max."""
    store_knn_reference: bool = True
    """Store training rows' embeddings in the weights for kNN fusion; false drops them (and the fusion) so that
    a shared model holds nothing derived from individual training rows."""

    knn_index: KnnIndexSection | None = None
    """Approximate search (faiss IVF/HNSW, the `ann` extra) for kNN references from `min_size` rows on."""

    MODEL_CONFIG_FIELDS = (
        "pooling",
        "projection_dim",
        "classifier_dropout",
        "knn_fusion_weight",
        "knn_fusion_k",
        "knn_fusion_temperature",
        "gem_p",
    )
    """The keys that `MetricClassifierConfig` takes as they are (the others shape what `run` stores)."""

    def model_config(self) -> dict[str, Any]:
        """The `MetricClassifierConfig` fields this section sets."""
        return {name: getattr(self, name) for name in self.MODEL_CONFIG_FIELDS}

    def validate(self) -> None:
        _check(self.projection_dim is None or self.projection_dim > 0, "model.projection_dim", "must be > 0")
        _check(0.0 <= self.classifier_dropout < 1.0, "model.classifier_dropout", "must be in [0, 1)")
        _check(0.0 <= self.knn_fusion_weight <= 1.0, "model.knn_fusion_weight", "must be in [0, 1]")
        _check(self.knn_fusion_k >= 1, "model.knn_fusion_k", "must be >= 1")
        _check(self.knn_fusion_temperature > 0, "model.knn_fusion_temperature", "must be > 0")
        _check(self.knn_reference_max_rows >= 1, "model.knn_reference_max_rows", "must be >= 1")
        _check(self.gem_p > 0, "model.gem_p", "must be > 0")
        if self.knn_index is not None:
            self.knn_index.validate()


@dataclass
class GroupMarginSection:
    """Per-class margins from the data's `group` column: classes sharing a group get the larger `same`."""

    same: float = 0.7
    default: float = 0.5
    same_group_pair: float = 0.0
    """Pair-wise: an extra cosine margin against the classes of the row's own group (0: off)."""

    def validate(self) -> None:
        _check(self.same >= 0 and self.default >= 0, "head.group_margin", "margins must be >= 0")
        _check(0 <= self.same_group_pair < 1, "head.group_margin.same_group_pair", "must be in [0, 1)")


MARGIN_HEADS = ("arcface", "subcenter_arcface", "cosface", "circle")
SCALED_HEADS = ("cosine", *MARGIN_HEADS)
PAIR_MARGIN_HEADS = ("arcface", "subcenter_arcface", "cosface")


@dataclass
class HeadSection:
    """The classification head. `null` keeps the head's own default (see hf_metric.heads.HEADS)."""

    type: str = "cosine"
    scale: float | None = None
    margin: float | None = None
    easy_margin: bool = False
    sub_centers: int | None = None
    temperature: float = 1.0
    group_margin: GroupMarginSection | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a head registered with `hf_metric.register_head`, given as keys of `head:`."""

    def validate(self) -> None:
        from ..model.heads import HEADS

        if self.type not in HEADS:
            raise ConfigError(f"head.type: unknown head type {self.type!r}; known: {sorted(HEADS)}")
        if self.options:
            own = [f for f in self.__dataclass_fields__ if f != "options"]
            self.options = check_options(
                HEADS[self.type], self.options, "head.", own, ("in_features", "num_labels"), (4, 2)
            )
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
            _check(
                not self.group_margin.same_group_pair or self.type in PAIR_MARGIN_HEADS,
                "head.group_margin.same_group_pair",
                f"needs a target-margin head ({', '.join(PAIR_MARGIN_HEADS)})",
            )

    def head_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the chosen head (circle calls its scale `gamma` and its margin `m`)."""
        kwargs: dict[str, Any] = {"temperature": self.temperature}
        names = {"scale": "gamma", "margin": "m"} if self.type == "circle" else {}
        for key in ("scale", "margin", "sub_centers"):
            if getattr(self, key) is not None:
                kwargs[names.get(key, key)] = getattr(self, key)
        if self.easy_margin:
            kwargs["easy_margin"] = True
        return {**kwargs, **self.options}


@dataclass
class DataSection:
    parquet_path: str = ""
    val_ratio: float = 0.1
    num_workers: int = 0
    upsample: int | None = None
    downsample: int | None = None
    out_of_scope_label: str | None = None
    """Rows with this label belong to no class: they only validate (open-set calibration and metrics)."""
    max_audio_seconds: float = 10.0
    """Audio clips are cut (or padded with silence) to this length after resampling to the extractor's rate."""
    skip_bad_rows: bool = False
    """An image/audio row that cannot be read is skipped and counted (log, data summary) instead of stopping."""
    image_augment: ImageAugmentSection = field(default_factory=ImageAugmentSection)
    audio_augment: AudioAugmentSection = field(default_factory=AudioAugmentSection)
    validate_on_train: bool = False
    """Hold out no rows (`val_ratio` is ignored): for few-shot data, and for the final refit on every row once the
    settings were chosen on a held-out split (Banking77: +0.3 test accuracy). Validation then re-scores the training
    rows, so it measures fit, not generalisation (pair it with `checkpointing.save_best_by: loss`)."""

    def validate(self) -> None:
        _check(self.max_audio_seconds > 0, "data.max_audio_seconds", "must be > 0")
        self.image_augment.validate()
        self.audio_augment.validate()
        _check(bool(self.parquet_path), "data.parquet_path", "is required")
        _check(self.out_of_scope_label != "", "data.out_of_scope_label", "must be a non-empty label or null")
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
class BankNegativesSection:
    """Cross-batch memory (XBM): the embedding bank's newest `size` rows join the metric loss as extra positives
    and negatives (detached) from optimizer step `start_step` on; before it the embeddings drift too fast."""

    size: int = 1024
    start_step: int = 100

    def validate(self) -> None:
        _at_least(self, "training.bank_negatives.", size=1, start_step=0)


@dataclass
class HardGroupMiningSection:
    """Hard-group curriculum (`hf_metric.training.curriculum`): groups drawn in proportion to their validation
    error from epoch `start_epoch` (0-based), weights clipped to [min_weight, max_oversample] x the mean."""

    start_epoch: int = 1
    max_oversample: float = 3.0
    min_weight: float = 0.25

    def validate(self) -> None:
        _at_least(self, "training.hard_group_mining.", start_epoch=0, max_oversample=1)
        _check(0 < self.min_weight <= 1, "training.hard_group_mining.min_weight", "must be in (0, 1]")


@dataclass
class TrainingSection:
    batch_size: int = 32
    num_epochs: float = 5.0
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 64
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    attention_implementation: str | None = None
    gradient_clip_val: float | None = 1.0
    seed: int = 42
    resume_from: str | None = None
    sampler: Literal["pk", "random", "group_pk"] = "pk"
    samples_per_class: int = 4
    distributed_metric_loss: Literal["global", "local_anchors"] = "global"
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=lambda: ["none"])
    collapse_check_steps: int | None = None
    max_nonfinite_steps: int = 10
    bank_negatives: BankNegativesSection | None = None
    group_mix: float = 0.25
    groups_per_batch: int = 2
    hard_group_mining: HardGroupMiningSection | None = None
    length_grouping: bool = False
    """P x K batches (pk or group_pk) of rows of similar token length (`training.length_batches`): less padding."""

    def validate(self) -> None:
        _check(self.batch_size > 0, "training.batch_size", "must be > 0")
        _check(
            not self.length_grouping or self.sampler != "random",
            "training.length_grouping",
            "needs sampler: pk or group_pk",
        )
        _check(self.num_epochs > 0, "training.num_epochs", "must be > 0")
        _at_least(self, "training.", gradient_accumulation_steps=1, max_seq_length=2)
        _check(
            self.gradient_clip_val is None or self.gradient_clip_val > 0,
            "training.gradient_clip_val",
            "must be > 0 or null",
        )
        _check(self.samples_per_class >= 1, "training.samples_per_class", "must be >= 1")
        if self.sampler in ("pk", "group_pk"):
            _check(
                self.batch_size % self.samples_per_class == 0,
                "training.batch_size",
                f"({self.batch_size}) must be a multiple of training.samples_per_class "
                f"({self.samples_per_class}) for P x K batches",
            )
        self._validate_groups()
        _check(self.logging_steps >= 1, "training.logging_steps", "must be >= 1")
        _check(
            self.collapse_check_steps is None or self.collapse_check_steps >= 1,
            "training.collapse_check_steps",
            "must be >= 1 or null (null: every logging_steps)",
        )
        _check(self.max_nonfinite_steps >= 1, "training.max_nonfinite_steps", "must be >= 1")
        if self.bank_negatives is not None:
            self.bank_negatives.validate()
        _check(
            "neptune" not in self.report_to,
            "training.report_to",
            "neptune is configured in the neptune: section (transformers' NeptuneCallback is deprecated)",
        )

    def _validate_groups(self) -> None:
        _check(0.0 <= self.group_mix <= 1.0, "training.group_mix", "must be in [0, 1]")
        _check(self.groups_per_batch >= 1, "training.groups_per_batch", "must be >= 1")
        if self.hard_group_mining is not None:
            _check(self.sampler == "group_pk", "training.hard_group_mining", "needs training.sampler: group_pk")
            self.hard_group_mining.validate()

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


@dataclass
class OptimizerSection:
    learning_rate: float = 1e-4
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
    warmup_steps: float = 0.1
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
    save_best_by: str = "f1"
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
    always_fail_min_rows: int = 5

    def validate(self) -> None:
        _check(len(self.recall_at_k) > 0, "metric_validation.recall_at_k", "must list at least one K")
        _check(all(k > 0 for k in self.recall_at_k), "metric_validation.recall_at_k", "every K must be > 0")
        _check(self.knn_k > 0, "metric_validation.knn_k", "must be > 0")
        _check(self.keep_last_n_emb_steps > 0, "metric_validation.keep_last_n_emb_steps", "must be > 0")
        _check(self.always_fail_min_rows >= 1, "metric_validation.always_fail_min_rows", "must be >= 1")
        if self.plots and self.embedding_map == "umap":
            _check(
                available("umap"), "metric_validation.embedding_map", "umap needs `pip install umap-learn` (or: pca)"
            )


@dataclass
class OpenSetSection:
    """Open-set rejection, calibrated on the validation split at the end of training (see
    `hf_metric.evaluation.open_set_calibration`); the rule is saved in the model's config."""

    enabled: bool = False
    score: Literal["auto", "msp", "energy", "knn", "mahalanobis", "fused"] = "auto"
    criterion: Literal["auto", "accuracy", "in_scope_recall", "fpr", "accuracy_drop"] = "auto"
    target: float | None = None
    mahalanobis_ridge: float = 1e-3
    energy_temperature: float = 1.0
    train_with_oos: bool = False
    """Known out-of-scope rows (`data.out_of_scope_label`) also train: split like a class between train and
    validation, never a class for CE, negatives of every class in the metric loss (`model.objective`)."""
    outlier_exposure_weight: float = 0.0
    """With `train_with_oos`: weight of the outlier-exposure term, CE between their softmax and the uniform."""

    def validate(self) -> None:
        _check(self.outlier_exposure_weight >= 0, "open_set.outlier_exposure_weight", "must be >= 0")
        _check(
            self.train_with_oos or self.outlier_exposure_weight == 0,
            "open_set.outlier_exposure_weight",
            "needs open_set.train_with_oos: true (outlier exposure trains on the out-of-scope rows)",
        )
        _check(self.target is None or 0.0 <= self.target <= 1.0, "open_set.target", "must be in [0, 1] or null")
        _check(
            self.target is None or self.criterion not in ("auto", "accuracy"),
            "open_set.target",
            "needs criterion in_scope_recall, fpr or accuracy_drop",
        )
        _check(self.mahalanobis_ridge >= 0, "open_set.mahalanobis_ridge", "must be >= 0")
        _check(self.energy_temperature > 0, "open_set.energy_temperature", "must be > 0")
