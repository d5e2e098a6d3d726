"""Name -> class registries for heads and losses, so that the YAML can select a user's own class.

A registry is a plain `dict` (so `name in REGISTRY` and `REGISTRY[name]` work) with a `register` decorator and a
`build` that names the known choices when a name is unknown. This file travels with saved models as remote code
(see `modeling.py`), so it depends on nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict):
    """`{name: class}` with `register(name)` as a class decorator; `kind` names it in error messages."""

    def __init__(self, kind: str, entries: dict[str, type] | None = None) -> None:
        super().__init__(entries or {})
        self.kind = kind

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Class decorator: `@REGISTRY.register("name")` makes the class selectable as `type: name`."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorate(cls: T) -> T:
            if name in self and self[name] is not cls and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self[name].__qualname__})")
            self[name] = cls
            return cls

        return decorate

    def get_class(self, name: str) -> type:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        return self[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get_class(name)(*args, **kwargs)
