"""Exact top-k search shared out among the processes of a distributed run (gloo or NCCL).

Under accelerate every process holds the gathered validation predictions and the same embedding bank, so a
plain search repeats the whole N_query x N_ref work on each of them. Here every process searches all queries
against its own contiguous 1/n of the references (`shard_span`), and the per-process top k are merged: each
result row becomes order-preserving int64 keys (score, global index; `topk_merge._keys`), the keys are
all-gathered, and one `topk` over the n x k keys of a query is its global top k. The result equals the
one-process search (same order, ties by lower index), and validation time falls with the number of processes.

`distributed_topk_neighbors` takes a shard that each process already holds (a stored reference split across
machines); `sharded_topk_neighbors` is a drop-in for `neighbors.topk_neighbors` on references every process
holds whole (the trainer's bank), and falls back to the local search outside a multi-process run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..model.neighbors import Distance, as_float_tensor, topk_neighbors
from ..model.topk_merge import _EMPTY, _key_indices, _key_values, _keys


def world() -> int:
    """Processes of the initialised default group, or 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard_span(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of process `rank` among `world_size` near-equal shards of `n` rows."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def distributed_topk_neighbors(query, ref_shard, k: int, distance: Distance = "cos", **options: Any):
    """`topk_neighbors` of `query` (the same on every process) against the union of every process's
    `ref_shard`, in rank order: global reference indices count rank 0's rows first; `options` go to each
    process's local search (not `exclude_self`). Every process gets the full result. Collective: all processes
    must call it with the same `query` shape and `k`."""
    q = as_float_tensor(query)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(ref_shard)], dtype=torch.int64))
    counts = [int(s) for s in sizes]
    offset, total = sum(counts[: dist.get_rank()]), sum(counts)
    k = min(k, total)
    keys = torch.full((q.shape[0], k), _EMPTY, dtype=torch.int64)
    if len(ref_shard) and k:
        scores, indices = topk_neighbors(q, as_float_tensor(ref_shard, q.device), k, distance, **options)
        higher = scores if distance == "cos" else scores.neg()  # keys order "higher is nearer"
        keys[:, : scores.shape[1]] = _keys(higher.cpu(), indices.cpu() + offset)
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys)
    best = torch.cat(parts, dim=1).topk(k, dim=1).values
    scores, indices = _key_values(best), _key_indices(best)
    return (scores if distance == "cos" else scores.neg()).to(q.device), indices.to(q.device)


def sharded_topk_neighbors(query, ref, k: int, distance: Distance = "cos", **options: Any):
    """`topk_neighbors(query, ref, k, distance, **options)` with its work split among the processes (module
    doc); `ref` is whole on every process. Leave-one-out (`exclude_self`) and one-process runs use the local
    search; the split search hands the other options to each process's local search."""
    if world() == 1 or options.get("exclude_self"):
        return topk_neighbors(query, ref, k, distance, **options)
    start, stop = shard_span(len(ref), dist.get_rank(), dist.get_world_size())
    return distributed_topk_neighbors(query, ref[start:stop], k, distance, **options)
