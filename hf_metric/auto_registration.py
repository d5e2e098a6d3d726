"""Registration with transformers, on demand: `import hf_metric` stays light (no torch), yet
`transformers.pipeline("knn-classification", ...)` and `AutoModel.from_pretrained(folder)` know hf_metric's tasks
and model class as soon as the user reaches for them.

`install()` (run by `import hf_metric`) puts a finder at the front of `sys.meta_path` that watches two transformers
modules: `transformers.pipelines` (imported by `pipeline(...)`) and `transformers.models.auto.modeling_auto`
(imported by the Auto classes). Right after one of them has run, hf_metric's pipelines module is imported, which
registers the Auto classes (`hf_metric.model`) and the three pipeline tasks. When transformers already imported
them before hf_metric, `install()` registers at once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

TRIGGERS = ("transformers.pipelines", "transformers.models.auto", "transformers.models.auto.modeling_auto")


def register(completing: str | None = None) -> None:
    """Register the model with the Auto classes and the pipeline tasks (idempotent). Skipped while a module of
    hf_metric or transformers is still being imported (a trigger imported from inside another import): the
    outer import, or hf_metric's own `model` package, registers when it completes. `completing`: the trigger
    whose import is finishing now (still marked as being imported)."""
    if "hf_metric.sharing.pipelines" in sys.modules or _importing(completing):
        return
    importlib.import_module("hf_metric.sharing.pipelines")


def _importing(completing: str | None) -> bool:
    """Whether a module of hf_metric or transformers is partially initialised (importlib marks its spec)."""
    for name, module in list(sys.modules.items()):
        if name == completing or not name.startswith(("hf_metric.", "transformers")):
            continue
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a trigger module so that `register` runs after it."""

    def find_spec(self, name: str, path: Any, target: Any = None):
        if name not in TRIGGERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register(module.__name__)

    def __getattr__(self, name: str):  # get_data, get_filename, ... of the wrapped loader
        return getattr(self.loader, name)


def install() -> None:
    if any(name in sys.modules for name in TRIGGERS):
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
