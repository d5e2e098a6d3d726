"""`--set dotted.key=value` overrides from the command line, validated exactly like the YAML.

Each override is parsed with `yaml.safe_load` (so `3`, `1e-4`, `true`, `null`, `[1, 5]` mean what they mean in the
file) and merged into the raw config before `parse_config` checks it: an unknown key gets the same
"did you mean" hint as in a YAML file, and the error names the override that caused it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError

T = TypeVar("T")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"training.batch_size=16"` -> `(["training", "batch_size"], 16)`; a one-line `ConfigError` when malformed."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value (e.g. training.batch_size=16)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None
    return [p.strip() for p in parts], parsed


def merge_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of the raw config with every `dotted.key=value` set (a later override wins)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of keys, got {type(raw).__name__}")
    merged = copy.deepcopy(dict(raw))
    for text in overrides:
        parts, value = parse_override(text)
        node = merged
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return merged


def apply_overrides(raw: Any, overrides: Iterable[str], build: Callable[[Any], T]) -> T:
    """`build(raw with overrides)` (the validated config); a problem caused by an override names it."""
    overrides = list(overrides)
    if not overrides:
        return build(raw)
    merged = merge_overrides(raw, overrides)
    try:
        return build(merged)
    except ConfigError as err:
        key = str(err).split(":", 1)[0]
        culprit = next((o for o in reversed(overrides) if _names_key(o.partition("=")[0].strip(), key)), None)
        if culprit is None:
            raise
        raise ConfigError(f"--set {culprit}: {err}") from None


def _names_key(override_key: str, error_key: str) -> bool:
    """Whether an error about `error_key` (e.g. `training.focal_alpha[1]`) is about the overridden key."""
    return error_key == override_key or error_key.startswith((f"{override_key}.", f"{override_key}["))
