"""Registered components in the YAML (losses, heads): a `type` picked from a registry plus that class's own
keyword arguments, validated against its constructor exactly like the built-in keys.

A section with `OPTIONS_FIELD = "options"` collects the keys that are not its own fields into `options`;
`check_options` then holds them against the chosen class's signature (unknown key -> did-you-mean, value ->
the parameter's type hint) and builds the class once, so a bad value fails at load time with the class's own
message rather than mid-training. A user's class registered with `hf_metric.register_metric_loss` (or
`register_classification_loss`, `register_head`) is checked the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from .schema import OPTIONS_FIELD, coerce, unknown_key

__all__ = ["OPTIONS_FIELD", "check_options", "constructor_parameters"]


def _constructors(cls: type) -> list[Any]:
    """`cls.__init__`, then its bases' as long as each hands `**kwargs` on (a margin head declares only its own
    arguments and passes the rest to the cosine head): together they are what the class accepts."""
    inits = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        inits.append(init)
        kinds = [p.kind for p in inspect.signature(init).parameters.values()]
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            break
    return inits


def constructor_parameters(cls: type, skip: Iterable[str] = (), inherited: bool = True) -> dict[str, inspect.Parameter]:
    """Keyword parameters of `cls.__init__` (not self, *args, **kwargs or `skip`) and, if `inherited`, of the
    bases it hands `**kwargs` to; where a subclass declares a parameter again, its own wins."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    found: dict[str, inspect.Parameter] = {}
    for init in _constructors(cls)[: None if inherited else 1]:
        for name, param in inspect.signature(init).parameters.items():
            if name != "self" and name not in skip and param.kind in kinds:
                found.setdefault(name, param)
    return found


def _hints(cls: type) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for init in reversed(_constructors(cls)):
        with contextlib.suppress(Exception):  # annotations a user's module cannot resolve: take YAML values as they are
            hints.update(typing.get_type_hints(init))
    return hints


def check_options(
    cls: type,
    options: dict[str, Any],
    prefix: str,
    extra_names: Iterable[str] = (),
    skip: Iterable[str] = (),
    build_args: tuple = (),
) -> dict[str, Any]:
    """`options` checked against `cls`'s constructor, with its own defaults filled in (the resolved config shows
    its settings; those it hands on to a base keep the base's defaults); builds `cls(*build_args, **options)`
    once so its own checks run now. `extra_names` are the section's own fields, offered in the did-you-mean
    hint."""
    params = constructor_parameters(cls, skip)
    hints = _hints(cls)
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            raise unknown_key(key, prefix, [*extra_names, *params])
        hint = hints.get(key)
        resolved[key] = coerce(value, hint, f"{prefix}{key}") if _coercible(hint) else value
    for name, param in constructor_parameters(cls, skip, inherited=False).items():
        if name not in resolved and param.default is not inspect.Parameter.empty:
            resolved[name] = param.default
    missing = [n for n, p in params.items() if n not in resolved and p.default is inspect.Parameter.empty]
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
