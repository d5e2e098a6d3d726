"""The sections of the YAML config that describe the data, the training run and what is validated (the model's
own sections are in `model_sections.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..optional import available
from .schema import at_least as _at_least
from .schema import check as _check


@dataclass
class BankNegativesSection:
    """Cross-batch memory (XBM): the embedding bank's newest `size` rows join the metric loss as extra positives
    and negatives (detached) from optimizer step `start_step` on; before it the embeddings drift too fast."""

    size: int = 1024
    """The newest rows of the embedding bank that join the metric loss."""
    start_step: int = 100
    """Optimizer step from which the memory is used."""

    def validate(self) -> None:
        _at_least(self, "training.bank_negatives.", size=1, start_step=0)


@dataclass
class HardGroupMiningSection:
    """Hard-group curriculum (`hf_metric.training.curriculum`): groups drawn in proportion to their validation
    error from epoch `start_epoch` (0-based), weights clipped to [min_weight, max_oversample] x the mean."""

    start_epoch: int = 1
    """First epoch (0-based) whose groups are drawn by their validation error; the epochs before are uniform."""
    max_oversample: float = 3.0
    """Upper clip of a group's weight, as a multiple of the mean."""
    min_weight: float = 0.25
    """Lower clip of a group's weight, as a multiple of the mean, in (0, 1]."""

    def validate(self) -> None:
        _at_least(self, "training.hard_group_mining.", start_epoch=0, max_oversample=1)
        _check(0 < self.min_weight <= 1, "training.hard_group_mining.min_weight", "must be in (0, 1]")


@dataclass
class TrainingSection:
    """The training loop: batches and samplers, epochs, precision, seeding, logging and safeguards."""

    batch_size: int = 32
    """Rows per device per micro-batch (P classes x K samples_per_class for the P x K samplers)."""
    num_epochs: float = 5.0
    """Training epochs (may be fractional); ignored when scheduler.num_training_steps is set."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; each loss part is normalised over the whole window."""
    max_seq_length: int = 64
    """Tokens per text after truncation (padding is dynamic per batch)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """`no`, `fp16` (GPU only) or `bf16`; heads and losses compute in float32 either way."""
    attention_implementation: str | None = None
    """The backbone's attention: null (library default), `eager`, `sdpa` or `flash_attention_2`."""
    gradient_clip_val: float | None = 1.0
    """Maximum gradient norm; null: no clipping."""
    seed: int = 42
    """Seeds the validation split, the batch order, the new weights and dropout."""
    resume_from: str | None = None
    """A checkpoint folder, or `latest` (the newest in checkpointing.checkpoints_dir); null: start afresh."""
    sampler: Literal["pk", "random", "group_pk"] = "pk"
    """`pk`: P classes x K rows per batch (the metric loss needs positives); `random`: plain shuffling; `group_pk`: P
    x K with the classes drawn from a few groups (needs a `group` column)."""
    samples_per_class: int = 4
    """K of the P x K batches; batch_size must be a multiple of it."""
    distributed_metric_loss: Literal["global", "local_anchors"] = "global"
    """Several processes: `global` (exact, gradients through every process's embeddings) or `local_anchors` (cheaper:
    the other processes' embeddings detached)."""
    logging_steps: int = 10
    """Optimizer steps between log lines (loss, its parts, learning rate, gradient norm)."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Trackers the Trainer reports to: `none`, `tensorboard`, `mlflow`, `trackio`, `wandb`, `all`, ... (a name or a
    list; Neptune has its own `neptune` section)."""
    collapse_check_steps: int | None = None
    """Optimizer steps between collapse checks on the training batch (logged as batch_*); null: every logging_steps."""
    max_nonfinite_steps: int = 10
    """A step with a NaN/inf loss or gradient norm is skipped; this many in a row stop the run."""
    bank_negatives: BankNegativesSection | None = None
    group_mix: float = 0.25
    """group_pk: share of the P classes of a batch drawn from other groups than the batch's own."""
    groups_per_batch: int = 2
    """group_pk: the in-group classes of a batch come from at most this many groups."""
    hard_group_mining: HardGroupMiningSection | None = None
    length_grouping: bool | None = None
    """P x K batches (pk or group_pk) of rows of similar token length (`training.length_batches`): less padding.
    None (the default): on for text with pk / group_pk batches, off otherwise (images and audio have fixed shapes).
    On validation (Banking77, HWU64, 3 seeds) it kept accuracy and macro-F1 and halved the CPU training time."""

    def groups_lengths(self, input_column: str) -> bool:
        """Whether batches are length-grouped for inputs of `input_column` (`length_grouping`, None resolved)."""
        if self.length_grouping is not None:
            return self.length_grouping
        return input_column == "text" and self.sampler in ("pk", "group_pk")

    def validate(self) -> None:
        _check(self.batch_size > 0, "training.batch_size", "must be > 0")
        _check(
            self.length_grouping is not True or self.sampler != "random",
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

    @property
    def collapse_every(self) -> int:
        """Optimizer steps between two collapse checks on the training batch."""
        return self.collapse_check_steps or self.logging_steps


@dataclass
class OptimizerSection:
    """AdamW and its per-parameter learning rates."""

    learning_rate: float = 1e-4
    """AdamW peak learning rate (write `1.0e-4`: plain `1e-4` is a string in YAML, which is accepted too)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    head_lr_multiplier: float = 1.0
    """The head and the projection (trained from scratch) learn this many times faster than the backbone."""
    layerwise_lr_decay: float = 1.0
    """In (0, 1]: backbone block l of L learns at decay**(L - l) times the rate, the embeddings at decay**L; 1: off."""

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
    """The learning-rate schedule (any transformers scheduler)."""

    name: str = "linear"
    """Any transformers scheduler: `linear`, `cosine`, `cosine_with_restarts`, `constant`, ..."""
    warmup_steps: float = 0.1
    """Warm-up: a whole number of optimizer steps, or a ratio of all training steps when < 1."""
    num_training_steps: int | None = None
    """Total optimizer steps; overrides training.num_epochs. Null: from the epochs."""
    num_cycles: float = 0.5
    """`cosine`: number of waves (0.5 = one half-cosine decay); `cosine_with_restarts`: number of restarts."""

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
    """Where and when checkpoints are written, and which one is the best."""

    checkpoints_dir: str = "checkpoints"
    """Where checkpoints, best/, plots/, metrics.json, report.md and resolved_config.yaml go."""
    save_every_n_batches: int | None = None
    """Evaluate and save every N optimizer steps; null: at the end of every epoch."""
    save_best_by: str = "f1"
    """The metric that picks the best checkpoint: `loss`, `acc`, `f1` (macro-F1 of the classifier) or any logged
    metric name (`knn_f1`, `recall@1`, a user evaluator's metric, ...)."""
    save_total_limit: int = 2
    """Checkpoints kept on disk (the best one is always kept)."""

    def validate(self) -> None:
        _check(
            self.save_every_n_batches is None or self.save_every_n_batches > 0,
            "checkpointing.save_every_n_batches",
            "must be > 0 or null (null: once per epoch)",
        )
        _check(self.save_total_limit >= 1, "checkpointing.save_total_limit", "must be >= 1")


@dataclass
class MetricValidationSection:
    """What each evaluation computes and draws besides accuracy and F1: retrieval, kNN, the bank, pictures, your own
    evaluators."""

    recall_at_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    """The K of Recall@K, validation rows against the embedding bank."""
    distance: Literal["cos", "l2"] = "cos"
    """Distance for retrieval and kNN: `cos` or `l2`."""
    knn_k: int = 10
    """Neighbours in the kNN classification of validation rows."""
    keep_last_n_emb_steps: int = 50
    """The embedding bank holds the training embeddings of the last N optimizer steps."""
    plots: bool = True
    """Pictures at every evaluation, into checkpoints_dir/plots/ and the trackers."""
    embedding_map: Literal["pca", "umap"] = "pca"
    """Projection of the embedding map picture: `pca`, or `umap` (needs `pip install umap-learn`)."""
    always_fail_min_rows: int = 5
    """With a `group` column: a class with at least this many validation rows and none right is reported as always
    failing."""
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
    """Calibrate the rejection rule at the end of training and save it in the model's config."""
    score: Literal["auto", "msp", "energy", "knn", "mahalanobis", "fused"] = "auto"
    """`auto` (the best on validation; `fused` without out-of-scope validation rows), `msp`, `energy`, `knn`,
    `mahalanobis` or `fused`."""
    criterion: Literal["auto", "accuracy", "in_scope_recall", "fpr", "accuracy_drop"] = "auto"
    """How the threshold is chosen: `auto` (`accuracy` with at least 100 out-of-scope validation rows, else
    `in_scope_recall` on the `fused` score: a few rows cannot choose a threshold), `accuracy`, `in_scope_recall`,
    `fpr` or `accuracy_drop`."""
    target: float | None = None
    """Target of the criterion: in_scope_recall (default 0.95; also `auto`'s with few out-of-scope rows), fpr
    (0.05) or accuracy_drop (0.01)."""
    mahalanobis_ridge: float = 1e-3
    """Ridge added to the shared covariance (times its mean variance) before inverting it."""
    energy_temperature: float = 1.0
    """Temperature T of the energy score T * logsumexp(logits / T)."""
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
            self.target is None or self.criterion != "accuracy",
            "open_set.target",
            "needs criterion auto (the in-scope recall kept with few out-of-scope rows), in_scope_recall, fpr or "
            "accuracy_drop",
        )
        _check(self.mahalanobis_ridge >= 0, "open_set.mahalanobis_ridge", "must be >= 0")
        _check(self.energy_temperature > 0, "open_set.energy_temperature", "must be > 0")
