"""The configuration reference of the documentation site, generated from the config dataclasses.

One source of truth: a key's type and default come from its dataclass field, its description from the attribute
docstring under the field (the string literal on the line after it, as PEP 257 and griffe read it). The options
of registered components (a loss's `temperature`, a head's `scale`) come from the chosen class's constructor. The
hook `hooks.py` renders this into the configuration page at build time; `tests/test_docs.py` fails when a key has
no description.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import yaml

OPTIONS_FIELD = "options"
"""The field of a registered component's section that collects its class's own keyword arguments."""


@dataclass(frozen=True)
class Key:
    """One YAML key of the training config."""

    path: str
    """Dotted key, as `--set` takes it (`training.batch_size`)."""
    type: str
    default: str
    description: str
    section: str
    """Dotted path of the section holding the key ("" for the top level)."""


def attribute_docstrings(cls: type) -> dict[str, str]:
    """Field name -> attribute docstring, over `cls` and its dataclass bases (the class's own text wins)."""
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # a class made by make_dataclass has no source: its bases may
            continue
        node = ast.parse(source).body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for stmt, after in itertools.pairwise(body):
            target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
            if (
                isinstance(target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                found.setdefault(target.id, inspect.cleandoc(after.value.value))
    return found


def class_docstring(cls: type) -> str:
    """The docstring written for the class (not the signature text `dataclass` invents when there is none)."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    except (OSError, TypeError):  # made by make_dataclass: its namespace may carry a __doc__
        doc = cls.__dict__.get("__doc__") or ""
        return "" if doc.startswith(f"{cls.__name__}(") else inspect.cleandoc(doc)
    return (ast.get_docstring(node) or "") if isinstance(node, ast.ClassDef) else ""


def _section_type(hint: Any) -> type | None:
    """The dataclass a field holds (also inside `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def type_name(hint: Any) -> str:
    """A type hint as a reader of the YAML sees it: `int or null`, `cos | l2`, `list of int`, `mapping`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if hint is dict or origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(hint):
        return "mapping"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(hint, getattr(hint, "__name__", str(hint)))


def yaml_value(value: Any) -> str:
    """A default as YAML writes it in flow style (`null`, `true`, `[1, 5, 10]`)."""
    if dataclasses.is_dataclass(value):
        return "(see below)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000).strip()
    return text.removesuffix("\n...").removesuffix(" ...").strip()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(root: type | None = None, prefix: str = "") -> list[Key]:
    """Every key of the config under `root` (default: `hf_metric.config.TrainConfig`), depth first: a section's
    own keys, then its subsections' keys."""
    if root is None:
        from hf_metric.config import TrainConfig

        root = TrainConfig
    hints = typing.get_type_hints(root)
    docs = attribute_docstrings(root)
    keys: list[Key] = []
    nested: list[tuple[str, type]] = []
    for f in dataclasses.fields(root):
        if f.name == OPTIONS_FIELD:
            continue
        path = f"{prefix}{f.name}"
        section = _section_type(hints[f.name])
        # a section key without its own docstring is described by its class's docstring (its first paragraph)
        description = docs.get(f.name) or (class_docstring(section).split("\n\n")[0] if section else "")
        keys.append(Key(path, type_name(hints[f.name]), yaml_value(_default(f)), description, prefix[:-1]))
        if section is not None:
            nested.append((path, section))
    for path, section in nested:
        keys.extend(config_keys(section, prefix=f"{path}."))
    return keys


def section_classes(root: type | None = None, prefix: str = "") -> dict[str, type]:
    """Dotted section path -> its dataclass ("" is the top level)."""
    if root is None:
        from hf_metric.config import TrainConfig

        root = TrainConfig
    found = {prefix[:-1]: root}
    hints = typing.get_type_hints(root)
    for f in dataclasses.fields(root):
        section = _section_type(hints[f.name])
        if section is not None:
            found.update(section_classes(section, prefix=f"{prefix}{f.name}."))
    return found


LABELS = {
    "en": {
        "key": "key",
        "type": "type",
        "default": "default",
        "description": "description",
        "top": "Top level",
        "options": "Settings of each registered type (the class's constructor arguments, given beside `type`)",
        "registered": "registered type",
        "class": "class",
        "settings": "settings (default)",
        "none": "none",
    },
    "ru": {
        "key": "ключ",
        "type": "тип",
        "default": "по умолчанию",
        "description": "описание",
        "top": "Верхний уровень",
        "options": "Настройки каждого зарегистрированного типа (аргументы конструктора класса, рядом с `type`)",
        "registered": "зарегистрированный тип",
        "class": "класс",
        "settings": "настройки (по умолчанию)",
        "none": "нет",
    },
}
"""Table headings of the generated reference per page language; the descriptions themselves are the English
docstrings (the one source of truth)."""

COMPONENT_SECTIONS = {
    "loss.classification": ("hf_metric.model.losses", "CLASSIFICATION_LOSSES", ()),
    "loss.metric": ("hf_metric.model.losses", "METRIC_LOSSES", ()),
    "head": ("hf_metric.model.heads", "HEADS", ("in_features", "num_labels")),
}
"""Sections whose extra keys are a registered class's constructor arguments: module, registry, skipped args."""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def component_table(section: str, lang: str = "en") -> str:
    """The registered types of a component section and each one's settings with their defaults."""
    import importlib

    from hf_metric.config.components import constructor_parameters

    module, registry_name, skip = COMPONENT_SECTIONS[section]
    registry = getattr(importlib.import_module(module), registry_name)
    words = LABELS[lang]
    rows = [f"| {words['registered']} | {words['class']} | {words['settings']} |", "|---|---|---|"]
    for name in sorted(registry):
        cls = registry[name]
        params = constructor_parameters(cls, skip)
        settings = ", ".join(
            f"`{p}`" + ("" if v.default is inspect.Parameter.empty else f" ({yaml_value(v.default)})")
            for p, v in params.items()
        )
        rows.append(f"| `{name}` | `{cls.__module__}.{cls.__qualname__}` | {settings or words['none']} |")
    return "\n".join(rows)


def render(lang: str = "en", heading_level: int = 3) -> str:
    """The whole reference as Markdown: one table per section, in the order of the YAML."""
    words = LABELS[lang]
    classes = section_classes()
    by_section: dict[str, list[Key]] = {}
    for key in config_keys():
        by_section.setdefault(key.section, []).append(key)
    out: list[str] = []
    for section, keys in by_section.items():
        hashes = "#" * heading_level
        out.append(f"{hashes} {f'`{section}`' if section else words['top']}\n")
        intro = class_docstring(classes[section])
        if intro and section:
            out.append(_cell(intro) + "\n")
        out.append(f"| {words['key']} | {words['type']} | {words['default']} | {words['description']} |")
        out.append("|---|---|---|---|")
        for key in keys:
            default = f"`{key.default}`" if key.default != "(see below)" else key.default
            out.append(f"| `{key.path}` | {_cell(key.type)} | {default} | {_cell(key.description)} |")
        out.append("")
        if section in COMPONENT_SECTIONS:
            out.append(f"{words['options']}:\n")
            out.append(component_table(section, lang))
            out.append("")
    return "\n".join(out)
