"""Float32 islands inside mixed-precision training, shared by the heads and the losses.

Under fp16/bf16 autocast a matrix product runs in half precision: cosines then carry ~3 significant digits,
exp(s / T) and a 64x scale amplify that error (SupCon in bf16 is off by ~1e-2), and small constants such as a
1e-12 clamp under a square root underflow to 0 (batch-hard triplet's gradient turns NaN in fp16). So every head
and loss does its normalisation, similarities, exponentials and reductions in float32 (float64 inputs stay
float64, so tests can compare with float64 references) with autocast switched off, and returns float32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs; float64 stays float64."""
    return torch.promote_types(tensor.dtype, torch.float32)


def no_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Locally disable autocast on `device` (where autocast exists at all)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def float32_math(function: F) -> F:
    """Run `function` (a loss function or method) with autocast off on the device of its first tensor argument."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with no_autocast(device):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
