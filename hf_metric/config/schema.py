"""A typed builder for the YAML: dataclass fields are the schema; every problem is a one-line `ConfigError`.

Unknown keys get a "did you mean" hint, values are checked against the field's type hint (ints are accepted as
floats, and YAML's "1e-4" strings as numbers), so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import types
import typing
import warnings
from collections.abc import Iterable
from typing import Any, Literal, Union

from ..errors import ConfigError

logger = logging.getLogger(__name__)

OPTIONS_FIELD = "options"
"""A section with this field is a registered component (a loss, a head): keys it does not declare are the
chosen class's own keyword arguments (see `components.py`)."""

LEGACY_KEYS = {("checkpointing", "save_every_n_bathces"): "save_every_n_batches"}
"""Old spellings inside a section still accepted (with a deprecation warning) so existing configs keep working."""


def check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def at_least(section: Any, prefix: str, **lows: float) -> None:
    """Each named field of `section` must be >= its bound; the first one below it is `<prefix><name>: must be >=
    <bound>` (the bounds most sections check)."""
    for name, low in lows.items():
        check(getattr(section, name) >= low, f"{prefix}{name}", f"must be >= {low}")


def unknown_key(key: str, prefix: str, names: Iterable[str]) -> ConfigError:
    """The error for a key that is not in `names`, with the closest known key as a hint."""
    names = list(names)
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known keys: {', '.join(names)})"
    return ConfigError(f"{prefix}{key}: unknown key{hint}")


def deprecated(old: str, new: str) -> None:
    msg = f"{old} is deprecated, use {new}"
    warnings.warn(msg, FutureWarning, stacklevel=3)
    logger.warning(msg)


def build_section(cls: type, raw: Any, prefix: str) -> Any:
    section_name = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{section_name}: expected a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    for (section, old), new in LEGACY_KEYS.items():
        if prefix == f"{section}." and old in raw:
            if new in raw:
                raise ConfigError(f"{prefix}{old}: legacy spelling given together with {prefix}{new}; keep one")
            deprecated(f"{prefix}{old}", f"{prefix}{new}")
            raw[new] = raw.pop(old)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    collects_options = OPTIONS_FIELD in names  # a registered component: other keys are its class's arguments
    values: dict[str, Any] = {OPTIONS_FIELD: {}} if collects_options else {}
    for key, value in raw.items():
        if collects_options and key not in names:
            values[OPTIONS_FIELD][key] = value
        elif key not in names or key == OPTIONS_FIELD:
            raise unknown_key(key, prefix, [n for n in names if n != OPTIONS_FIELD])
        else:
            values[key] = coerce(value, hints[key], f"{prefix}{key}")
    return cls(**values)


def section_to_dict(section: Any) -> Any:
    """A section as plain data, as the YAML writes it: a component's `options` sit beside its own keys."""
    if not dataclasses.is_dataclass(section):
        return section
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name == OPTIONS_FIELD:
            out.update(value)
        elif dataclasses.is_dataclass(value):
            out[f.name] = section_to_dict(value)
        else:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Return `value` checked against the type hint (ints are accepted as floats, and YAML's "1e-4" strings)."""
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value if value is not None else {}, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors: list[Exception] = []
        for arg in non_none:
            try:
                return coerce(value, arg, key)
            except (ConfigError, TypeError) as err:  # TypeError: a type the YAML cannot express (a tensor)
                errors.append(err)
        raise next((e for e in errors if isinstance(e, ConfigError)), errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = args
        if isinstance(value, str) and item_type is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type_name(value)} {value!r}")
        return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping of keys, got {type_name(value)} {value!r}")
        return dict(value)
    if hint in _EXPECTED:
        return _scalar(value, hint, key)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # pragma: no cover - programming error


_EXPECTED = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
"""The YAML scalars a field may hold, and how an error names them."""


def _scalar(value: Any, hint: type, key: str) -> Any:
    """`value` as the scalar `hint`: ints are accepted as floats and whole floats as ints, YAML's "1e-4" strings
    as numbers; true/false is never a number."""
    if hint is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    accepted = (int, float) if hint is float else hint
    if isinstance(value, accepted) and not (hint in (int, float) and isinstance(value, bool)):
        return float(value) if hint is float else value
    raise ConfigError(f"{key}: expected {_EXPECTED[hint]}, got {type_name(value)} {value!r}")


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
