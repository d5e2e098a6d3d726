"""The YAML training config: typed sections (`sections.py`, `integrations.py`), strict validation (`schema.py`).

Every key is a dataclass field, so the set of valid keys, their types and defaults live in one place. Loading
rejects unknown keys (with a "did you mean" hint), wrong types and impossible values with a one-line
`ConfigError` that names the key, because a typo in a config should never silently train the wrong model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .integrations import HubSection, NeptuneSection
from .overrides import apply_overrides
from .schema import build_section
from .schema import check as _check
from .sections import (
    CheckpointingSection,
    DataSection,
    GroupMarginSection,
    HeadSection,
    MetricValidationSection,
    ModelSection,
    OptimizerSection,
    SchedulerSection,
    TrainingSection,
)

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


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read and validate a YAML config with `--set dotted.key=value` `overrides` applied; every problem is a
    `ConfigError` whose message starts with the file (or the override that caused it)."""
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
        return apply_overrides(raw if raw is not None else {}, overrides)
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith("--set ") else f"{path}: {err}") from None


def config_from_dict(raw: Any) -> TrainConfig:
    """Build a validated `TrainConfig` from plain data (the parsed YAML)."""
    cfg = build_section(TrainConfig, raw, prefix="")
    cfg.validate()
    return cfg


__all__ = [
    "CheckpointingSection",
    "DataSection",
    "GroupMarginSection",
    "HeadSection",
    "HubSection",
    "MetricValidationSection",
    "ModelSection",
    "NeptuneSection",
    "OptimizerSection",
    "SchedulerSection",
    "TrainConfig",
    "TrainingSection",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]
