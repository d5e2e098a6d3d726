"""Per-parameter learning rates: a faster head and layer-wise learning-rate decay for the backbone.

A new head starts from random weights while the backbone is already pretrained: the head can take far larger
steps (`head_lr_multiplier`), and lower backbone layers, which hold the most general features, are better
changed least (`layerwise_lr_decay`, as in ELECTRA/BEiT fine-tuning: layer l of L gets decay**(L - l) of the
rate, the embeddings decay**L).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

LAYER_INDEX = re.compile(r"\.(?:layer|layers|block|blocks|h)\.(\d+)\.")
"""Transformer block index in a parameter name (BERT `encoder.layer.3.`, ModernBERT `layers.3.`, GPT `h.3.`)."""

BACKBONE_PREFIX = "backbone."


def learning_rate_scale(name: str, num_layers: int, head_lr_multiplier: float, layerwise_lr_decay: float) -> float:
    """Multiplier of the base learning rate for the parameter called `name` in a `MetricClassifierModel`."""
    if not name.startswith(BACKBONE_PREFIX):
        return head_lr_multiplier  # head, projection: trained from scratch
    match = LAYER_INDEX.search(name)
    if match is not None:
        depth = min(int(match.group(1)) + 1, num_layers)
    elif "embed" in name:
        depth = 0
    else:  # pooler, final norm: above the last block
        depth = num_layers
    return layerwise_lr_decay ** (num_layers - depth)


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: Iterable[str],
    head_lr_multiplier: float = 1.0,
    layerwise_lr_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per (learning rate, weight decay) pair, trainable parameters only."""
    decay_names = set(decay_parameter_names)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    indices = [int(m.group(1)) for n, _ in named if n.startswith(BACKBONE_PREFIX) and (m := LAYER_INDEX.search(n))]
    num_layers = max(indices, default=-1) + 1
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in named:
        lr = learning_rate * learning_rate_scale(name, num_layers, head_lr_multiplier, layerwise_lr_decay)
        wd = weight_decay if name in decay_names else 0.0
        groups.setdefault((lr, wd), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]
