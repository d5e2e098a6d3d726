"""Classification heads on the pooled embedding: `head(embeddings, labels=None, margin=None) -> logits`.

Heads that apply a margin use `labels` only in training; at inference (no labels) they return the plain scaled
cosines, so a saved model predicts without labels. The margin goes on the target logit only, and rows labelled
-100 (ignored) get none.

Every head registered here is a `Head` and takes a `temperature` (default 1): logits are divided by it before
the softmax. `build_head` also wraps heads registered from elsewhere that know nothing of temperature.

Every head computes its logits in float32 even under fp16/bf16 autocast (`precision.py`): a scale of 64 times a
half-precision cosine is too coarse for the margin to mean anything, and ArcFace weights trained with Adam in
fp16 turn to NaN. The margin heads' class weights are a raw `nn.Parameter` of shape
`(num_labels * sub_centers, in_features)`, initialised in `reset_parameters`, so the model's `_init_weights`
(which re-initialises every `nn.Linear`) leaves them alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base_heads import CosineLinear, Head, LinearHead
from .margin_heads import ArcFaceHead, CircleHead, CosFaceHead, SubCenterArcFaceHead
from .registry import Registry


class TemperatureScaled(nn.Module):
    """Divides the logits of any head by `temperature` (for heads that do not take one themselves)."""

    def __init__(self, head: nn.Module, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.head = head
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.head(embeddings, *args, **kwargs) / self.temperature


HEADS = Registry(
    "head type",
    {
        "linear": LinearHead,
        "cosine": CosineLinear,
        "arcface": ArcFaceHead,
        "subcenter_arcface": SubCenterArcFaceHead,
        "cosface": CosFaceHead,
        "circle": CircleHead,
    },
)
"""`head.type` in the YAML -> head class. Every class takes `(in_features, num_labels, **head_kwargs)` and is
called as `head(embeddings, labels=None, margin=None)`; add your own with `hf_metric.register_head("name")`.

head_kwargs per type (all also take `temperature`, default 1.0):
    linear: -
    cosine: scale=30.0, sub_centers=1
    arcface: scale=64.0, margin=0.5 (radians), easy_margin=False, sub_centers=1
    subcenter_arcface: scale=64.0, margin=0.5, sub_centers=3, easy_margin=False
    cosface: scale=64.0, margin=0.35, sub_centers=1
    circle: m=0.25, gamma=256.0, sub_centers=1
"""


def build_head(head_type: str, in_features: int, num_labels: int, **head_kwargs: Any) -> nn.Module:
    """The head `HEADS[head_type](in_features, num_labels, **head_kwargs)`.

    `temperature` works for every registered type: `Head` subclasses take it themselves (so the state-dict keys
    do not depend on it); any other class is wrapped in `TemperatureScaled` when it is not 1.
    """
    cls = HEADS.get_class(head_type)
    if issubclass(cls, Head) or "temperature" not in head_kwargs:
        return cls(in_features, num_labels, **head_kwargs)
    temperature = head_kwargs.pop("temperature")
    head = cls(in_features, num_labels, **head_kwargs)
    return head if temperature == 1.0 else TemperatureScaled(head, temperature)


__all__ = [
    "HEADS",
    "ArcFaceHead",
    "CircleHead",
    "CosFaceHead",
    "CosineLinear",
    "Head",
    "LinearHead",
    "SubCenterArcFaceHead",
    "TemperatureScaled",
    "build_head",
]
