"""Optional dependencies: whether one is installed, and which extra to install when it is not.

hf_metric's core needs only what a text model needs; pictures by UMAP, audio, images and ONNX come as extras
(`pip install "hf_metric[umap]"` and so on), checked here so that the error names the extra to add.
"""

from __future__ import annotations

import importlib.util

from .errors import ConfigError


def available(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str, needed_for: str) -> None:
    """A one-line `ConfigError` naming the extra to install when `module` is missing."""
    if not available(module):
        raise ConfigError(f'{needed_for} needs `{module}`: pip install "hf_metric[{extra}]"')
