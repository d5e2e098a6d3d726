"""The sections of the YAML config that describe the data, the training run and what is validated (the model's
own sections are in `model_sections.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..optional import available
from .media import AudioAugmentSection, ImageAugmentSection
from .schema import at_least as _at_least
from .schema import check as _check

COLUMN_ROLES = ("text", "image", "audio", "label", "group", "metric_mask", "classifier_mask")
"""The column names hf_metric reads; `data.columns` maps the user's own names to them."""


@dataclass
class DatasetSection:
    """Rows from `datasets.load_dataset` (or a `save_to_disk` folder) instead of `data.parquet_path`."""

    path: str = ""
    """A local folder (`save_to_disk` output, or Parquet/CSV/JSON files), one such file, or a Hub name (online)."""
    name: str | None = None
    """The data set's configuration name (`load_dataset(path, name)`), if it has several."""
    split: str = "train"
    """The split that trains."""
    val_split: str | None = None
    """A split that validates as it is (replaces `data.val_ratio`), e.g. `validation`; null: split by val_ratio."""
    revision: str | None = None
    """A Hub revision (branch, tag or commit) to pin the data to."""

    def validate(self) -> None:
        _check(bool(self.path), "data.dataset.path", "is required")
        _check(bool(self.split), "data.dataset.split", "must be a split name")
        _check(self.val_split != self.split, "data.dataset.val_split", f"must differ from split ({self.split!r})")


@dataclass
class DataSection:
    parquet_path: str | list[str] = ""
    """Training rows: a Parquet file, a folder of Parquet shards, a glob (`data/train-*.parquet`) or a list of
    them; CSV (`.csv`) and JSON Lines (`.jsonl`, `.json`) files are read too. Shards are read in sorted order and
    must share one schema; they give the same prepared data as the same rows in one file."""
    val_path: str | list[str] | None = None
    """Validation rows in the same forms as `parquet_path`, used as they are instead of splitting `val_ratio` off
    the training rows (folds by date or by site). Labels are matched by name with training's; a label unknown to
    training is an error, except `out_of_scope_label`."""
    dataset: DatasetSection | None = None
    """A `datasets` source (`path`, `name`, `split`, `val_split`, `revision`) instead of `parquet_path`."""
    columns: dict[str, str] | None = None
    """The user's column names for the ones hf_metric reads, e.g. `{text: utterance, label: intent}`; keys among
    text, image, audio, label, group, metric_mask, classifier_mask."""
    val_ratio: float = 0.1
    """Share of each class held out for validation (seeded) when no `val_path` / `dataset.val_split` is given."""
    num_workers: int = 0
    """DataLoader worker processes that decode image/audio batches (0: in the training process)."""
    upsample: int | None = None
    """Draw every class up to at least this many training rows (with replacement); null: as they are."""
    downsample: int | None = None
    """Cut every class down to at most this many training rows (seeded); null: as they are."""
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
        _check(
            bool(self.parquet_path) or self.dataset is not None,
            "data.parquet_path",
            "is required (or data.dataset)",
        )
        _check(
            not (self.parquet_path and self.dataset is not None),
            "data.dataset",
            "is given together with data.parquet_path; keep one",
        )
        self._validate_sources()
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

    def _validate_sources(self) -> None:
        if self.dataset is not None:
            self.dataset.validate()
            _check(
                not (self.val_path and self.dataset.val_split),
                "data.val_path",
                "is given together with data.dataset.val_split; keep one",
            )
        for key in ("parquet_path", "val_path"):
            value = getattr(self, key)
            if isinstance(value, list):
                _check(bool(value) and all(value), f"data.{key}", "must be a non-empty list of paths")
        explicit_val = bool(self.val_path) or (self.dataset is not None and bool(self.dataset.val_split))
        _check(
            not (explicit_val and self.validate_on_train),
            "data.validate_on_train",
            "cannot be combined with data.val_path / data.dataset.val_split",
        )
        for role, name in (self.columns or {}).items():
            _check(role in COLUMN_ROLES, f"data.columns.{role}", f"unknown column; one of {list(COLUMN_ROLES)}")
            _check(isinstance(name, str) and bool(name), f"data.columns.{role}", "must be a column name")
        names = list((self.columns or {}).values())
        twice = sorted({n for n in names if names.count(n) > 1})
        _check(not twice, "data.columns", f"column {twice[0]!r} is mapped twice" if twice else "")


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
    """P x K batches of rows of similar token length (`samplers.ClassBalancedBatchSampler`): less padding."""

    def validate(self) -> None:
        _check(self.batch_size > 0, "training.batch_size", "must be > 0")
        _check(not self.length_grouping or self.sampler == "pk", "training.length_grouping", "needs sampler: pk")
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


SCHEDULER_NAMES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
"""transformers' `SchedulerType` values, written out so that checking a config imports no torch (a test keeps
the list equal to the installed transformers')."""


@dataclass
class SchedulerSection:
    name: str = "linear"
    warmup_steps: float = 0.1
    num_training_steps: int | None = None
    num_cycles: float = 0.5

    def validate(self) -> None:
        names = list(SCHEDULER_NAMES)
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
    evaluators: list[str | dict[str, Any]] = field(default_factory=list)
    """Your own evaluators (`hf_metric.Evaluator` subclasses registered with `hf_metric.register_evaluator` in a
    module under `imports:`), run at every validation after the built-in ones: a name, or `{type: name, ...}` with
    the class's keyword arguments. The names their `metric_names()` return are valid `save_best_by` values."""

    def validate(self) -> None:
        for i, spec in enumerate(self.evaluators):
            _check(
                isinstance(spec, str) or (isinstance(spec, dict) and isinstance(spec.get("type"), str)),
                f"metric_validation.evaluators[{i}]",
                "must be a registered name or a mapping with a `type` name",
            )
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
    `hf_metric.open_set.calibration`); the rule is saved in the model's config."""

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
