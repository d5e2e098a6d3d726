"""Pooling: the backbone's hidden states -> one vector per input (the `pooling` setting of the config).

mean:   mean of the token (or frame) states, padding excluded through the attention mask
cls:    the first token's state
pooler: the backbone's own `pooler_output`
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "cls", "pooler")


def pool(
    mode: str,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pooler_output: torch.Tensor | None = None,
) -> torch.Tensor:
    """`(batch, dim)` from `(batch, tokens, dim)` hidden states by `mode` (one of `POOLING_MODES`)."""
    if mode == "cls":
        return hidden_states[:, 0]
    if mode == "pooler":
        if pooler_output is None:
            raise ValueError("pooling='pooler' but the backbone returns no pooler_output")
        return pooler_output
    if mode != "mean":
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
