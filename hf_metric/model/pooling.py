"""Pooling: the backbone's hidden states -> one vector per input (the `pooling` setting of the config).

mean:   mean of the token (or frame, or feature-map position) states, padding excluded through the mask
cls:    the first token's state (token/frame backbones: BERT, ViT, AST)
pooler: the backbone's own `pooler_output`
gem:    generalised mean, (mean x^p)^(1/p) over positions of non-negative activations clamped at `eps`
        (Radenovic et al., 2018); the retrieval standard for convolutional feature maps (ConvNeXt)

Convolutional backbones return `(batch, channels, height, width)` maps: they are flattened to
`(batch, positions, channels)` first, so every mode but `cls` applies to them as well.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "cls", "pooler", "gem")


def as_positions(hidden_states: torch.Tensor) -> torch.Tensor:
    """`(batch, positions, dim)`: token states unchanged, a `(batch, channels, H, W)` map flattened."""
    if hidden_states.ndim == 4:
        return hidden_states.flatten(2).transpose(1, 2)
    return hidden_states


def gem(states: torch.Tensor, p: float = 3.0, eps: float = 1e-6, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised mean over positions of `(batch, positions, dim)` states (computed in float32)."""
    x = states.float().clamp(min=eps).pow(p)
    if mask is None:
        mean = x.mean(dim=1)
    else:
        weights = mask.unsqueeze(-1).float()
        mean = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return mean.pow(1.0 / p).to(states.dtype)


def pool(
    mode: str,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pooler_output: torch.Tensor | None = None,
    gem_p: float = 3.0,
) -> torch.Tensor:
    """`(batch, dim)` from hidden states by `mode` (one of `POOLING_MODES`); the mask must match positions."""
    if mode == "pooler":
        if pooler_output is None:
            raise ValueError("pooling='pooler' but the backbone returns no pooler_output")
        return pooler_output.flatten(1)
    if mode == "cls":
        if hidden_states.ndim == 4:
            raise ValueError("pooling='cls' needs token states; a convolutional backbone needs gem, mean or pooler")
        return hidden_states[:, 0]
    states = as_positions(hidden_states)
    if mode == "gem":
        return gem(states, gem_p, mask=attention_mask)
    if mode != "mean":
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
    if attention_mask is None:
        return states.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
