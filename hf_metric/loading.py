"""The loader: a YAML config read and checked by `hf_metric.config`, then its components checked against their
registries.

`hf_metric.config` knows only plain settings, so that a config error answers without importing torch. The names
that select code (`head.type`, `loss.*.type` and their options, `metric_validation.evaluators`,
`checkpointing.save_best_by`) are checked here, where the registries are, after the user's `imports:` have
registered their classes. Every problem is a one-line `ConfigError` naming the file (or the `--set` override)
and the key.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import SAVE_BEST_BY_ALIASES, TrainConfig, parse_config, read_config
from .config.components import check_options
from .errors import ConfigError


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read, validate and check a YAML config with `--set dotted.key=value` `overrides` applied."""
    return read_config(path, overrides, check=check_components)


def config_from_dict(raw: Any) -> TrainConfig:
    """Build, validate and check a `TrainConfig` from plain data (the parsed YAML)."""
    return parse_config(raw, check=check_components)


def import_user_modules(modules: Any) -> None:
    """Import the `imports:` modules (by dotted name, found on sys.path / PYTHONPATH), so that the classes they
    register with `hf_metric.register_*` can be selected by the rest of the config."""
    for name in modules if isinstance(modules, list) else [modules] if modules else []:
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise ConfigError(f"imports: cannot import {name!r} ({err})") from None


def check_components(cfg: TrainConfig) -> None:
    """The user's modules imported, then every registry name and its options checked (options are coerced to
    the class's type hints in place, as the YAML gives strings for some)."""
    from .model.heads import HEADS
    from .model.losses import CLASSIFICATION_LOSSES, METRIC_LOSSES

    import_user_modules(cfg.imports)
    head = cfg.head
    if head.type not in HEADS:
        raise ConfigError(f"head.type: unknown head type {head.type!r}; known: {sorted(HEADS)}")
    if head.options:
        own = [f for f in head.__dataclass_fields__ if f != "options"]
        head.options = check_options(
            HEADS[head.type], head.options, "head.", own, ("in_features", "num_labels"), (4, 2)
        )
    for part, registry in ((cfg.loss.classification, CLASSIFICATION_LOSSES), (cfg.loss.metric, METRIC_LOSSES)):
        if part.type not in registry:
            raise ConfigError(f"{part.PREFIX}type: unknown {registry.kind} {part.type!r}; known: {sorted(registry)}")
        part.options = check_options(registry[part.type], part.options, part.PREFIX, extra_names=("type", "weight"))
    check_save_best_by(cfg)


def evaluator_metric_names(cfg: TrainConfig) -> tuple[str, ...]:
    """Every metric a run of `cfg` may report and choose its best checkpoint by: the built-in evaluators' (group
    metrics included: whether the data has groups is checked when the run starts) and the user's."""
    from .evaluation.base import EVALUATORS, build_evaluators
    from .evaluation.names import metric_names

    for i, spec in enumerate(cfg.metric_validation.evaluators):
        name = spec if isinstance(spec, str) else spec["type"]
        if name not in EVALUATORS:
            raise ConfigError(
                f"metric_validation.evaluators[{i}]: unknown evaluator {name!r}; known: {sorted(EVALUATORS)} "
                "(register yours with hf_metric.register_evaluator in a module listed under imports:)"
            )
    try:
        user = build_evaluators(cfg.metric_validation.evaluators)
    except TypeError as err:
        raise ConfigError(f"metric_validation.evaluators: {err}") from None
    builtin = metric_names(f"{cfg.loss.metric.type}_loss", cfg.metric_validation.recall_at_k, groups=True)
    return (*builtin, *(n for e in user for n in e.metric_names()))


def check_save_best_by(cfg: TrainConfig) -> None:
    logged = evaluator_metric_names(cfg)
    name = cfg.checkpointing.save_best_by.removeprefix("eval_")
    if name not in (*SAVE_BEST_BY_ALIASES, *logged):
        raise ConfigError(
            f"checkpointing.save_best_by: must be loss, acc, f1 or a logged metric ({', '.join(logged)}), got {name!r}"
        )
