"""The YAML training config: typed sections, strict validation, and the mapping onto `TrainingArguments`.

Every key is a dataclass field, so the set of valid keys, their types and defaults live in one place. Loading
rejects unknown keys (with a "did you mean" hint), wrong types and impossible values with a one-line
`ConfigError` that names the key, because a typo in a config should never silently train the wrong model.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError

logger = logging.getLogger(__name__)

SAVE_BEST_BY_ALIASES = {"loss": "eval_loss", "acc": "eval_accuracy", "f1": "eval_f1"}
"""`save_best_by` shorthands and the Trainer metric each one selects."""

SELECTABLE_METRICS = (
    "loss",
    "ce_loss",
    "supcon_loss",
    "triplet_loss",
    "multi_similarity_loss",
    "accuracy",
    "f1",
    "top5_accuracy",
    "knn_accuracy",
    "knn_f1",
    "bank_intra_class_cosine",
    "bank_mean_margin",
)
"""Logged evaluation metrics (without the `eval_` prefix) that `save_best_by` may name, besides `recall@K`."""

LEGACY_KEYS = {("checkpointing", "save_every_n_bathces"): "save_every_n_batches"}
"""Old spellings still accepted (with a deprecation warning) so existing configs keep working."""


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
            from ..evaluation.plots import umap_available

            _check(umap_available(), "metric_validation.embedding_map", "umap needs `pip install umap-learn` (or: pca)")


@dataclass
class NeptuneSection:
    """Neptune tracker settings. The API token is read only from NEPTUNE_API_TOKEN, never from this file."""

    mode: Literal["async", "sync", "offline", "debug", "disabled"] = "disabled"
    project: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    with_id: str | None = None
    log_model_checkpoints: bool = False

    def validate(self) -> None:
        if self.mode in ("async", "sync"):
            _check(bool(self.project), "neptune.project", f"is required when neptune.mode is {self.mode!r}")


@dataclass
class HubSection:
    """Upload of `<checkpoints_dir>/best` after training. The token comes from `HF_TOKEN` or `hf auth login`,
    never from this file; `HF_ENDPOINT` points at a private mirror."""

    push_to_hub: bool = False
    model_id: str | None = None
    private: bool = True
    revision: str | None = None
    commit_message: str = "Upload model trained with hf_metric"

    def validate(self) -> None:
        if self.push_to_hub:
            _check(bool(self.model_id), "hub.model_id", "is required when hub.push_to_hub is true")
        if self.model_id is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.model_id)
            except HFValidationError:
                raise ConfigError(f"hub.model_id: {self.model_id!r} is not a valid repo id (owner/name)") from None
        _check(bool(self.commit_message), "hub.commit_message", "must not be empty")


@dataclass
class TrainConfig:
    """The whole YAML file. `model_name` is a Hub id or a local path to a transformers encoder."""

    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    model: ModelSection = field(default_factory=ModelSection)
    head: HeadSection = field(default_factory=HeadSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    checkpointing: CheckpointingSection = field(default_factory=CheckpointingSection)
    metric_validation: MetricValidationSection = field(default_factory=MetricValidationSection)
    neptune: NeptuneSection = field(default_factory=NeptuneSection)
    hub: HubSection = field(default_factory=HubSection)

    def validate(self) -> None:
        _check(bool(self.model_name), "model_name", "is required")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()
        choices = [*SAVE_BEST_BY_ALIASES, *SELECTABLE_METRICS]
        choices += [f"recall@{k}" for k in self.metric_validation.recall_at_k]
        name = self.checkpointing.save_best_by.removeprefix("eval_")
        _check(
            name in choices,
            "checkpointing.save_best_by",
            f"must be loss, acc, f1 or a logged metric ({', '.join(choices[3:])}), got {name!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML, in section order (`resolved_config.yaml`, the report)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def metric_for_best_model(self) -> str:
        name = self.checkpointing.save_best_by.removeprefix("eval_")
        return SAVE_BEST_BY_ALIASES.get(name, f"eval_{name}")

    @property
    def greater_is_better(self) -> bool:
        return not self.metric_for_best_model.endswith("loss")


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML config; every problem is a `ConfigError` whose message starts with the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    try:
        return config_from_dict(raw if raw is not None else {})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_from_dict(raw: Any) -> TrainConfig:
    """Build a validated `TrainConfig` from plain data (the parsed YAML)."""
    cfg = _build(TrainConfig, raw, prefix="")
    cfg.validate()
    return cfg


def _build(cls: type, raw: Any, prefix: str) -> Any:
    section_name = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{section_name}: expected a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    for (section, old), new in LEGACY_KEYS.items():
        if prefix == f"{section}." and old in raw:
            if new in raw:
                raise ConfigError(f"{prefix}{old}: legacy spelling given together with {prefix}{new}; keep one")
            msg = f"{prefix}{old} is deprecated, use {prefix}{new}"
            warnings.warn(msg, FutureWarning, stacklevel=2)
            logger.warning(msg)
            raw[new] = raw.pop(old)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
        values[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Return `value` checked against the type hint (ints are accepted as floats, and YAML's "1e-4" strings)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_none:
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = args
        if isinstance(value, str) and item_type is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_type_name(value)} {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {_type_name(value)} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {_type_name(value)} {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_type_name(value)} {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_type_name(value)} {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # pragma: no cover - programming error


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
