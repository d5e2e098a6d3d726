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
from ..evaluation.names import metric_names
from .integrations import HubSection, NeptuneSection
from .losses import LossSection, legacy_loss_keys
from .overrides import apply_overrides
from .schema import build_section, section_to_dict
from .schema import check as _check
from .sections import (
    CheckpointingSection,
    DataSection,
    GroupMarginSection,
    HardGroupMiningSection,
    HeadSection,
    MetricValidationSection,
    ModelSection,
    OpenSetSection,
    OptimizerSection,
    SchedulerSection,
    TrainingSection,
)

FROM_SCRATCH = " (from scratch)"
"""`model_name` of a `model_config` run, e.g. "convnext (from scratch)": the model card and report show it."""

SAVE_BEST_BY_ALIASES = {"loss": "eval_loss", "acc": "eval_accuracy", "f1": "eval_f1"}
"""`save_best_by` shorthands and the Trainer metric each one selects."""


@dataclass
class TrainConfig:
    """The whole YAML file. `model_name` is a Hub id or a local path to a transformers encoder."""

    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    imports: list[str] = field(default_factory=list)
    """Python modules imported before the rest is checked: where your own losses and heads register themselves."""
    model: ModelSection = field(default_factory=ModelSection)
    head: HeadSection = field(default_factory=HeadSection)
    loss: LossSection = field(default_factory=LossSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    checkpointing: CheckpointingSection = field(default_factory=CheckpointingSection)
    metric_validation: MetricValidationSection = field(default_factory=MetricValidationSection)
    neptune: NeptuneSection = field(default_factory=NeptuneSection)
    hub: HubSection = field(default_factory=HubSection)
    model_config: dict | None = None
    """Train a backbone from scratch (random init) instead of loading `model_name`: the transformers config as a
    mapping with its `model_type`, e.g. `{model_type: convnext, hidden_sizes: [32, 64], depths: [2, 2]}`."""
    processor_config: dict | None = None
    """Arguments of the processor built for a `model_config` backbone (image size, mel bins, sampling rate), or
    overrides of a pretrained one's (`size`, `max_length`)."""
    open_set: OpenSetSection = field(default_factory=OpenSetSection)

    def validate(self) -> None:
        _check(bool(self.model_name) or self.model_config is not None, "model_name", "is required")
        if self.model_config is not None:
            _check("model_type" in self.model_config, "model_config", "needs a model_type (e.g. convnext, vit)")
            default_name = dataclasses.fields(self)[0].default
            _check(
                self.model_name in (default_name, "") or self.model_name.endswith(FROM_SCRATCH),
                "model_config",
                f"is given together with model_name {self.model_name!r}: keep one (model_config trains from scratch)",
            )
            self.model_name = f"{self.model_config['model_type']}{FROM_SCRATCH}"  # names the backbone in cards
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()
        _check(
            not self.open_set.train_with_oos or self.data.out_of_scope_label is not None,
            "open_set.train_with_oos",
            "needs data.out_of_scope_label (the label of the known out-of-scope rows)",
        )
        memory, t = self.training.bank_negatives, self.training
        if memory is not None:
            held = self.metric_validation.keep_last_n_emb_steps * t.batch_size * t.gradient_accumulation_steps
            _check(
                memory.size <= held,
                "training.bank_negatives.size",
                f"({memory.size}) exceeds the rows the bank holds (metric_validation.keep_last_n_emb_steps x "
                f"batch_size x gradient_accumulation_steps = {held}); raise keep_last_n_emb_steps",
            )
        # the group metrics need a `group` column, which only the data can tell (checked when the run starts)
        logged = metric_names(f"{self.loss.metric.type}_loss", self.metric_validation.recall_at_k, groups=True)
        name = self.checkpointing.save_best_by.removeprefix("eval_")
        _check(
            name in (*SAVE_BEST_BY_ALIASES, *logged),
            "checkpointing.save_best_by",
            f"must be loss, acc, f1 or a logged metric ({', '.join(logged)}), got {name!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML's shape (a component's own options beside its `type`)."""
        return section_to_dict(self)

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


def import_user_modules(modules: Any) -> None:
    """Import the `imports:` modules (by dotted name, found on sys.path / PYTHONPATH), so that the classes they
    register with `hf_metric.register_*` can be selected by the rest of the config."""
    import importlib

    for name in modules if isinstance(modules, list) else [modules] if modules else []:
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise ConfigError(f"imports: cannot import {name!r} ({err})") from None


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
    if isinstance(raw, dict):
        import_user_modules(raw.get("imports"))
        raw = legacy_loss_keys(raw)
    cfg = build_section(TrainConfig, raw, prefix="")
    cfg.validate()
    return cfg


__all__ = [
    "CheckpointingSection",
    "DataSection",
    "GroupMarginSection",
    "HardGroupMiningSection",
    "HeadSection",
    "HubSection",
    "LossSection",
    "MetricValidationSection",
    "ModelSection",
    "NeptuneSection",
    "OpenSetSection",
    "OptimizerSection",
    "SchedulerSection",
    "TrainConfig",
    "TrainingSection",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]
