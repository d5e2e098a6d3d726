"""Registered components in the YAML (losses, heads): a `type` picked from a registry plus that class's own
keyword arguments, validated against its constructor exactly like the built-in keys.

A section with `OPTIONS_FIELD = "options"` collects the keys that are not its own fields into `options`;
`check_options` then holds them against the chosen class's signature (unknown key -> did-you-mean, value ->
the parameter's type hint) and builds the class once, so a bad value fails at load time with the class's own
message rather than mid-training. A user's class registered with `hf_metric.register_metric_loss` (or
`register_classification_loss`, `register_head`) is checked the same way.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from .schema import OPTIONS_FIELD, coerce, unknown_key

__all__ = ["OPTIONS_FIELD", "check_options", "constructor_parameters"]


def constructor_parameters(cls: type, skip: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """Keyword parameters of `cls.__init__` (not self, *args, **kwargs or `skip`)."""
    params = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in params.items() if n != "self" and n not in skip and p.kind in kinds}


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # annotations a user's module cannot resolve here: accept the YAML value as it is
        return {}


def check_options(
    cls: type,
    options: dict[str, Any],
    prefix: str,
    extra_names: Iterable[str] = (),
    skip: Iterable[str] = (),
    build_args: tuple = (),
) -> dict[str, Any]:
    """`options` checked against `cls`'s constructor, with its defaults filled in (the resolved config shows every
    setting); builds `cls(*build_args, **options)` once so its own checks run now. `extra_names` are the
    section's own fields, offered in the did-you-mean hint."""
    params = constructor_parameters(cls, skip)
    hints = _hints(cls)
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            raise unknown_key(key, prefix, [*extra_names, *params])
        hint = hints.get(key)
        resolved[key] = coerce(value, hint, f"{prefix}{key}") if _coercible(hint) else value
    for name, param in params.items():
        if name not in resolved and param.default is not inspect.Parameter.empty:
            resolved[name] = param.default
    missing = [n for n, p in params.items() if n not in resolved]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: required by {cls.__name__}")
    try:
        cls(*build_args, **resolved)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{prefix.rstrip('.')}: {err}") from None
    return resolved


def _coercible(hint: Any) -> bool:
    """Whether `schema.coerce` understands the hint (plain scalars, lists, Optional/Union, Literal)."""
    if hint is None:
        return False
    try:
        coerce(None, hint, "probe")
    except ConfigError:
        return True
    except TypeError:
        return False
    return True
