"""Exact nearest neighbours by blocked matrix products, in memory that does not grow with N_query x N_ref.

Evaluating an embedding model means searching every query against a bank of reference rows. The obvious
`query @ ref.T` needs N_query x N_ref floats (160 GB for 200k x 200k); here the queries are cut into chunks,
the references into blocks, and each block's top k is merged into a running top k per query, so the extra
memory is one chunk_size x ref_chunk_size block plus the (N_query, k) result, whatever the sizes. The search
is exact (no index, no approximation) and deterministic: results are ordered by score and, among equal
float32 scores, by reference index (the lower index first), whatever the chunk sizes and however
`torch.topk` orders ties.

One caveat on "equal": BLAS libraries may round the same dot product differently in differently shaped
matrix products (MKL does for very thin ones), so two identical reference rows could score one last bit apart
if they fall in blocks of different shapes. Blocks are therefore cut to near-equal widths (`balanced_spans`);
with MKL on CPU, identical rows then score identically in practice. Data with exact ties by construction (as
in the tests) is unaffected.

Scores are "higher is nearer" internally; for `distance="l2"` the public functions return Euclidean
distances (ascending) instead. Inputs may be torch tensors or NumPy arrays; the work is done in float32 on the
device of `query`. A float32 CPU tensor or C-contiguous NumPy array is used in place (no copy).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

Distance = Literal["cos", "l2"]

DEFAULT_CHUNK_SIZE = 2048
"""Queries per chunk (at most). Big chunks mean few, large tensor operations: each one has a fixed cost
(thread start-up and synchronisation), which dominates small ones on a busy machine."""
MIN_CHUNK_SIZE = 512
"""The default chunk never goes below this, however small the data."""
DEFAULT_REF_CHUNK_SIZE = 16384
"""References per block. Wide blocks make the top-k pre-selection of `_block_topk` pay."""


def default_chunk_size(query: torch.Tensor, ref: torch.Tensor, ref_chunk_size: int | None = None) -> int:
    """`DEFAULT_CHUNK_SIZE` queries, fewer (not below `MIN_CHUNK_SIZE`) when the score block would outgrow the
    embeddings themselves: the search's working memory then stays within the data's own size at every scale
    (a 2048 x 16384 block is 128 MiB, which would dwarf a small evaluation set)."""
    same = query.data_ptr() == ref.data_ptr() and query.shape == ref.shape  # leave-one-out: one data set
    data_bytes = ref.numel() * 4 + (0 if same else query.numel() * 4)
    width = max(1, min(ref_chunk_size or DEFAULT_REF_CHUNK_SIZE, ref.shape[0]))
    return max(MIN_CHUNK_SIZE, min(DEFAULT_CHUNK_SIZE, data_bytes // (width * 4)))


def as_float_tensor(x: torch.Tensor | np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """A detached float32 tensor viewing `x` when possible (float32 input is not copied)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)


def _check_inputs(query: torch.Tensor, ref: torch.Tensor, distance: str, exclude_self: bool) -> None:
    if distance not in ("cos", "l2"):
        raise ValueError(f"distance must be 'cos' or 'l2', got {distance!r}")
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != ref.shape[1]:
        raise ValueError(f"expected 2-D query and ref of equal width, got {tuple(query.shape)}, {tuple(ref.shape)}")
    if exclude_self and query.shape[0] != ref.shape[0]:
        raise ValueError(
            f"exclude_self=True means the query set is the reference set, but they have {query.shape[0]} and "
            f"{ref.shape[0]} rows"
        )
    for name, t in (("query", query), ("ref", ref)):
        for start in range(0, t.shape[0], 65536):  # in slices, so the check needs no full-size bool copy
            if not bool(torch.isfinite(t[start : start + 65536]).all()):
                raise ValueError(f"{name} embeddings contain NaN or infinite values")


def balanced_spans(n: int, size: int) -> list[tuple[int, int]]:
    """`(start, stop)` spans covering range(n) in ceil(n / size) near-equal parts of at most `size`.

    Equal parts avoid a tiny last block: BLAS libraries switch to other kernels for very thin matrices, whose
    rounding differs, and identical rows would then score differently depending on where they fall.
    """
    if n <= 0:
        return []
    parts = -(-n // size)
    width = -(-n // parts)
    return [(start, min(start + width, n)) for start in range(0, n, width)]


def score_blocks(
    query: torch.Tensor,
    ref: torch.Tensor,
    distance: Distance = "cos",
    chunk_size: int | None = None,
    ref_chunk_size: int | None = None,
    exclude_self: bool = False,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield `(q0, r0, block)` with `block[i, j]` the score of query `q0 + i` against reference `r0 + j`.

    Scores are "higher is nearer": the cosine similarity for "cos", minus the squared Euclidean distance
    ``-(|q|^2 - 2 q.r + |r|^2)`` clamped at 0 for "l2". With `exclude_self`, a row's score against itself is
    -inf. Blocks come query chunk by query chunk, and within one chunk in increasing `r0`. `query` and `ref`
    must already be float32 tensors on one device; the block is reused, so copy what you keep.
    """
    chunk_size = chunk_size or default_chunk_size(query, ref, ref_chunk_size)
    ref_chunk_size = ref_chunk_size or DEFAULT_REF_CHUNK_SIZE
    if chunk_size < 1 or ref_chunk_size < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {chunk_size}, {ref_chunk_size}")
    n_query, n_ref = query.shape[0], ref.shape[0]
    cos = distance == "cos"
    # Row norms once (N floats each); rows are scaled one block at a time, so there is never a normalised copy
    # of the data. For "cos" a zero row keeps norm 1e-12 and scores 0, as with F.normalize.
    q_norm, r_norm = (torch.linalg.vector_norm(x, dim=1) for x in (query, ref))
    if cos:
        q_scale, r_scale = (n.clamp_(min=1e-12).reciprocal_() for n in (q_norm, r_norm))
    else:
        q_sq, r_sq = q_norm.square_(), r_norm.square_()
    # One buffer for every block, and one for the scaled references: fresh tensors would be page-faulted in
    # again each time.
    ref_spans = balanced_spans(n_ref, ref_chunk_size)
    widest = max((r1 - r0 for r0, r1 in ref_spans), default=0)
    buffer = torch.empty(min(chunk_size, n_query) * widest, device=query.device)
    ref_buffer = torch.empty(widest * ref.shape[1] if cos else 0, device=query.device)
    for q0, q1 in balanced_spans(n_query, chunk_size):
        q = query[q0:q1] * q_scale[q0:q1, None] if cos else query[q0:q1]
        for r0, r1 in ref_spans:
            block = buffer[: (q1 - q0) * (r1 - r0)].view(q1 - q0, r1 - r0)
            if cos:
                r = ref_buffer[: (r1 - r0) * ref.shape[1]].view(r1 - r0, ref.shape[1])
                torch.mul(ref[r0:r1], r_scale[r0:r1, None], out=r)
                torch.mm(q, r.T, out=block)
            else:  # 2 q.r - |r|^2 - |q|^2, clamped at 0 from above
                torch.addmm(r_sq[None, r0:r1], query[q0:q1], ref[r0:r1].T, beta=-1.0, alpha=2.0, out=block)
                block.sub_(q_sq[q0:q1, None]).clamp_(max=0.0)
            if exclude_self and r0 < q1 and q0 < r1:
                block.diagonal(offset=q0 - r0).fill_(float("-inf"))
            yield q0, r0, block


def _order_ties(values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder rows sorted by value (descending) so that equal values come by ascending position."""
    positions, order = positions.sort(dim=1)
    values, by_value = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    return values, positions.gather(1, by_value)


def _full_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries of each row of `block` under the order (value desc, column asc), in that order.

    `torch.topk` picks an arbitrary subset among values tied at the k-th place. Asking for k + 1 shows where
    that can happen (the (k+1)-th value equals the k-th): only those rows are redone, by a stable sort.
    """
    width = block.shape[1]
    if width <= k + 1:
        values, columns = block.sort(dim=1, descending=True, stable=True)
        return values[:, :k], columns[:, :k]
    values, columns = block.topk(k + 1, dim=1)
    ambiguous = (values[:, k] == values[:, k - 1]).nonzero().flatten()
    values, columns = _order_ties(values[:, :k], columns[:, :k])
    if len(ambiguous):
        sorted_v, sorted_c = block[ambiguous].sort(dim=1, descending=True, stable=True)
        values[ambiguous], columns[ambiguous] = sorted_v[:, :k], sorted_c[:, :k]
    return values, columns


GROUP = 16
"""Columns per group in the pre-selection of `_block_topk`."""


def _block_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_full_topk` of a block, with most of the block skipped by an exact pre-selection.

    `torch.topk` over every score costs about a fifth of the matrix product. Instead the columns are dealt
    into groups (columns j + m * n_groups, m < GROUP, form group j) and only the k groups with the highest
    maxima are searched: the k-th best score is at least the k-th largest group maximum (those k maxima are k
    distinct entries), so a group whose maximum is strictly below it holds nothing of the top k. Rows where the
    k-th and (k+1)-th maxima are equal, which could hide an equal score in an unsearched group, are searched
    in full. The candidates are gathered in ascending column order, so one stable sort orders them exactly.
    """
    rows, width = block.shape
    n_groups = width // GROUP
    if n_groups < 4 * (k + 1):  # too few groups for the pre-selection to pay
        return _full_topk(block, k)
    maxima = block[:, : n_groups * GROUP].unflatten(1, (GROUP, n_groups)).amax(dim=1)
    top_max, groups = maxima.topk(k + 1, dim=1)
    groups = groups[:, :k].sort(dim=1).values
    columns = (n_groups * torch.arange(GROUP, device=block.device)[:, None] + groups[:, None, :]).flatten(1)
    if width > n_groups * GROUP:  # the last width % GROUP columns are in no group: always candidates
        tail = torch.arange(n_groups * GROUP, width, device=block.device).expand(rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, order = block.gather(1, columns).sort(dim=1, descending=True, stable=True)
    values, columns = values[:, :k], columns.gather(1, order[:, :k])
    ambiguous = (top_max[:, k] == top_max[:, k - 1]).nonzero().flatten()
    if len(ambiguous):
        values[ambiguous], columns[ambiguous] = _full_topk(block[ambiguous], k)
    return values, columns


def topk_neighbors(
    query: torch.Tensor | np.ndarray,
    ref: torch.Tensor | np.ndarray,
    k: int,
    distance: Distance = "cos",
    chunk_size: int | None = None,
    exclude_self: bool = False,
    ref_chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest reference rows of every query row, exactly, in blocked memory.

    Args:
        query: (N_query, dim) embeddings.
        ref: (N_ref, dim) embeddings (the bank).
        k: neighbours per query. When fewer exist (k > N_ref, or k > N_ref - 1 with `exclude_self`), all that
            exist are returned: the result has min(k, available) columns, never padding.
        distance: "cos" (cosine similarity of the L2-normalised rows; an all-zero row has similarity 0 to
            everything) or "l2" (Euclidean distance, via |q|^2 - 2 q.r + |r|^2 clamped at 0).
        chunk_size: queries per chunk (default: `default_chunk_size`, at most `DEFAULT_CHUNK_SIZE`).
        exclude_self: leave-one-out: the query set is the reference set (same rows in the same order), and row
            i is never its own neighbour. Identical *other* rows are still neighbours.
        ref_chunk_size: references per block (default `DEFAULT_REF_CHUNK_SIZE`). Peak extra memory is about
            one chunk_size x ref_chunk_size float32 block, plus the (N_query, k) result.

    Returns:
        `(scores, indices)`, both (N_query, min(k, available)) on the device of `query`: cosine similarities in
        descending order for "cos", Euclidean distances in ascending order for "l2"; int64 reference indices.
        Ties (equal float32 scores; for "l2" equal squared distances) are ordered by reference index, lowest
        first, so the result does not depend on the chunk sizes.
    """
    device = query.device if isinstance(query, torch.Tensor) else None
    q, r = as_float_tensor(query, device), as_float_tensor(ref, device)
    _check_inputs(q, r, distance, exclude_self)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    k = min(k, r.shape[0] - int(exclude_self))
    n_query = q.shape[0]
    scores = torch.empty(n_query, max(k, 0), dtype=torch.float32, device=q.device)
    indices = torch.empty(n_query, max(k, 0), dtype=torch.int64, device=q.device)
    if k > 0 and n_query:
        best_v = best_i = None  # running top k of the current query chunk (fewer columns until k refs are seen)
        for q0, r0, block in score_blocks(q, r, distance, chunk_size, ref_chunk_size, exclude_self):
            v, i = _block_topk(block, k)
            i += r0
            if r0 > 0:
                # Earlier blocks hold lower indices, so a stable sort of [running, new] keeps index order on ties.
                v, order = torch.cat([best_v, v], dim=1).sort(dim=1, descending=True, stable=True)
                v, i = v[:, :k], torch.cat([best_i, i], dim=1).gather(1, order[:, :k])
            best_v, best_i = v, i
            if r0 + block.shape[1] == r.shape[0]:  # last block of this query chunk
                scores[q0 : q0 + block.shape[0]], indices[q0 : q0 + block.shape[0]] = best_v, best_i
    if distance == "l2":
        scores = scores.neg_().clamp_(min=0.0).sqrt_()
    return scores, indices


def nearest_same_and_other(
    emb: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    distance: Distance = "cos",
    chunk_size: int | None = None,
    ref_chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out, for each row: the best score to another row of its class, and to a row of another class.

    Scores are as in `score_blocks` (cosine similarity, or minus the squared Euclidean distance); -inf where no
    such row exists. Blocked like `topk_neighbors`, so no N x N matrix is ever built. `labels` are any
    integer codes, (N,).
    """
    e = as_float_tensor(emb)
    _check_inputs(e, e, distance, exclude_self=True)
    codes = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels, device=e.device)
    if codes.shape != (e.shape[0],):
        raise ValueError(f"labels must have shape ({e.shape[0]},), got {tuple(codes.shape)}")
    ninf = float("-inf")
    same = torch.full((e.shape[0],), ninf, device=e.device)
    other = torch.full((e.shape[0],), ninf, device=e.device)
    for q0, r0, block in score_blocks(e, e, distance, chunk_size, ref_chunk_size, exclude_self=True):
        rows = slice(q0, q0 + block.shape[0])
        is_same = codes[rows, None] == codes[None, r0 : r0 + block.shape[1]]
        same[rows] = torch.maximum(same[rows], block.masked_fill(~is_same, ninf).amax(dim=1))
        other[rows] = torch.maximum(other[rows], block.masked_fill_(is_same, ninf).amax(dim=1))
    return same, other
