"""Metric losses across processes: every process's anchors against every process's candidates.

Contrastive losses get better with more negatives, and under DDP each process only holds its own shard of the
global batch. Gathering embeddings with `torch.distributed.all_gather` passes no gradient, which silently
changes the loss's gradient; `torch.distributed.nn.functional.all_gather` does. With it, and DDP averaging the
gradients of N processes (the trainer multiplies the loss by N), N processes x B rows train exactly like one
process with N*B rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

CROSS_PROCESS_MODES = ("global", "local_anchors")


def gather_rows(tensor: torch.Tensor, pad_value: float | int = 0, with_grad: bool = False) -> torch.Tensor:
    """Concatenate `tensor` (rows first) from every process, each padded to the largest row count."""
    sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    width = int(max(s.item() for s in sizes))
    pad = [0, 0] * (tensor.dim() - 1) + [0, width - tensor.shape[0]]
    padded = F.pad(tensor, pad, value=pad_value)
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(padded))
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(parts)


def cross_process_candidates(
    embeddings: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, mode: str = "global"
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The rows of every process as metric-loss candidates for this process's anchors, and each local row's
    position among them (`self_index`), for `TrainingObjective` / a loss's `per_anchor`.

    `global`: candidates carry gradient to the process that produced them. `local_anchors`: other processes'
    candidates are detached, which saves the backward exchange but drops their share of the gradient.
    """
    if mode not in CROSS_PROCESS_MODES:
        raise ValueError(f"mode must be one of {CROSS_PROCESS_MODES}, got {mode!r}")
    all_labels = gather_rows(labels, pad_value=-1)
    all_mask = gather_rows(mask.to(torch.int64), pad_value=0)
    width = all_labels.shape[0] // dist.get_world_size()
    rank, n = dist.get_rank(), embeddings.shape[0]
    if mode == "global":
        candidates = gather_rows(embeddings, with_grad=True)
    else:
        others = gather_rows(embeddings.detach())
        local = F.pad(embeddings, (0, 0, 0, width - n))
        candidates = torch.cat([others[: rank * width], local, others[(rank + 1) * width :]])
    self_index = rank * width + torch.arange(n, device=embeddings.device)
    return (candidates, all_labels, all_mask), self_index


def cross_process_per_anchor(
    loss_fn: nn.Module,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "global",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor loss of this process's rows against the rows of all processes (`cross_process_candidates`);
    returns `(per_row, valid)` for the local rows, like the loss's own `per_anchor`."""
    candidates, self_index = cross_process_candidates(embeddings, labels, mask, mode)
    return loss_fn.per_anchor(embeddings, labels, mask, candidates=candidates, self_index=self_index)
