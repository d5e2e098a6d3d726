"""Exact nearest neighbours by blocked matrix products, in memory that does not grow with N_query x N_ref.

Evaluating an embedding model means searching every query against a bank of reference rows. The obvious
`query @ ref.T` needs N_query x N_ref floats (160 GB for 200k x 200k); here the queries are cut into chunks,
the references into blocks, and each block's candidates are merged into a running top k per query, so the
extra memory is one chunk_size x ref_chunk_size block per worker plus the (N_query, k) result, whatever the
sizes. The search is exact (no index, no approximation) and deterministic: results are ordered by score and,
among equal float32 scores, by reference index (the lower index first), whatever the chunk sizes, the number
of workers and however `torch.topk` orders ties.

Speed on CPU (measured against faiss `IndexFlatIP` in bench/bench_knn.py and bench/ab_knn.py) comes from:

- Independent workers. The query chunks are shared out among `torch.get_num_threads()` Python threads, each
  running single-threaded torch and BLAS calls. Two-thread operations end in a barrier, and on a busy machine
  one thread waits there for the other to be scheduled again; independent workers never wait. (The torch and
  BLAS thread counts are process-wide: they are 1 during the call, then restored.)
- NumPy's BLAS for the products (OpenBLAS in the PyPI wheels), which on AMD CPUs is about 1.35x faster per
  thread than the MKL that CPU builds of torch use (MKL takes slower code paths on non-Intel CPUs).
- A threshold pre-selection (`_merge_block`): once a query has k neighbours, only scores strictly above its
  k-th best can enter, and whole groups of columns are ruled out by their maxima. After the first few blocks
  almost nothing passes, so most blocks cost one pass (the group maxima) over their scores.

One caveat on "equal": BLAS libraries may round the same dot product differently in differently shaped
matrix products (MKL does for very thin ones), so two identical reference rows could score one last bit apart
if they fall in blocks of different shapes. Blocks are therefore cut to near-equal widths (`balanced_spans`);
identical rows then score identically in practice. Data with exact ties by construction (as in the tests) is
unaffected.

Scores are "higher is nearer" internally; for `distance="l2"` the public functions return Euclidean
distances (ascending) instead. Inputs may be torch tensors or NumPy arrays; the work is done in float32 on the
device of `query`. A float32 CPU tensor or C-contiguous NumPy array is used in place (no copy).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import Literal

import numpy as np
import torch

try:  # optional where this file is shipped as a model's remote code (`trust_remote_code`) without hf_metric
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - hf_metric itself depends on threadpoolctl
    ThreadpoolController = None

Distance = Literal["cos", "l2"]

DEFAULT_CHUNK_SIZE = 4096
"""Queries per chunk (at most)."""
MIN_CHUNK_SIZE = 256
"""The default chunk never goes below this, however small the data: thinner products run slower."""
CPU_REF_CHUNK_SIZE = 1024
"""References per block of the search on CPU. A chunk_size x 1024 block is still in the CPU cache when the
pass after the product reads it (faiss uses 4096 x 1024 blocks for the same reason), and the running
threshold of `_merge_block` tightens after every block."""
DEFAULT_REF_CHUNK_SIZE = 16384
"""References per block elsewhere: `score_blocks`, and the search on other devices, where fewer and larger
operations (and fewer waits for the device) pay more than the cache."""
BLOCK_MEMORY_SHARE = 0.35
"""The default chunk keeps every worker's score block together within this share of the embeddings' bytes,
so that the search's working memory stays small next to the data at every scale."""


def default_chunk_size(
    query: torch.Tensor, ref: torch.Tensor, ref_chunk_size: int | None = None, workers: int = 1
) -> int:
    """Queries per chunk: `DEFAULT_CHUNK_SIZE`, fewer when `workers` blocks of chunk x ref_chunk_size
    (default `DEFAULT_REF_CHUNK_SIZE`) scores would outgrow `BLOCK_MEMORY_SHARE` of the embeddings, or when the
    queries would not give every worker a chunk; never below `MIN_CHUNK_SIZE` (or the number of queries)."""
    same = query.data_ptr() == ref.data_ptr() and query.shape == ref.shape  # leave-one-out: one data set
    data_bytes = ref.numel() * 4 + (0 if same else query.numel() * 4)
    width = max(1, min(ref_chunk_size or DEFAULT_REF_CHUNK_SIZE, ref.shape[0]))
    by_memory = int(BLOCK_MEMORY_SHARE * data_bytes) // (workers * width * 4)
    per_worker = -(-query.shape[0] // max(1, workers))
    return max(1, min(query.shape[0], max(MIN_CHUNK_SIZE, min(DEFAULT_CHUNK_SIZE, by_memory, per_worker))))


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


def _check_finite(name: str, t: torch.Tensor) -> None:
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


# --- scoring ----------------------------------------------------------------------------------------------------


def _matmul_t(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out = a @ b.T`; on CPU by NumPy's BLAS, which is faster than torch's MKL on AMD CPUs (module doc)."""
    if out.device.type == "cpu":
        np.matmul(a.numpy(), b.numpy().T, out=out.numpy())
    else:
        torch.mm(a, b.T, out=out)
    return out


ROW_ALIGN = 256
"""Score rows are laid out padded to a multiple of this many columns (the pad holds -inf): the group maxima
of `_group_maxima` then reduce contiguous rows of GROUP-column-aligned vectors, several times faster than on
an unaligned width (0.11 vs 0.8 ns per score, measured for 1024 vs 1000 columns)."""


def _padded(width: int) -> int:
    return -(-width // ROW_ALIGN) * ROW_ALIGN


class _BlockScorer:
    """Score blocks of one search into buffers that the caller owns, so that workers share the row norms (N
    floats each) but nothing they write. Rows are scaled one chunk or block at a time: there is never a
    normalised copy of the data."""

    def __init__(self, query: torch.Tensor, ref: torch.Tensor, distance: Distance, exclude_self: bool) -> None:
        self.query, self.ref, self.exclude_self, self.cos = query, ref, exclude_self, distance == "cos"
        q_norm, r_norm = (torch.linalg.vector_norm(x, dim=1) for x in (query, ref))
        for name, x, norm in (("query", query, q_norm), ("ref", ref, r_norm)):
            if not bool(torch.isfinite(norm).all()):  # a NaN or inf entry makes its row's norm NaN or inf
                _check_finite(name, x)
        if self.cos:  # a zero row keeps norm 1e-12 and scores 0, as with F.normalize
            self.q_scale, self.r_scale = (n.clamp_(min=1e-12).reciprocal_() for n in (q_norm, r_norm))
        else:
            self.q_sq, self.r_sq = q_norm.square_(), r_norm.square_()

    def buffers(self, chunk_size: int, ref_chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat (queries, references, scores) buffers for the largest chunk and block; reused for every block,
        since fresh tensors would be page-faulted in again each time."""
        dim, device = self.query.shape[1], self.query.device
        rows = min(chunk_size, self.query.shape[0])
        width = min(ref_chunk_size, self.ref.shape[0])
        ref_rows = width * dim if self.cos else 0
        return (
            torch.empty(rows * dim, device=device),
            torch.empty(ref_rows, device=device),
            torch.empty(rows * _padded(width), device=device),
        )

    def queries(self, q0: int, q1: int, buffer: torch.Tensor) -> torch.Tensor:
        """Query rows q0:q1 ready for the product: unit length for "cos", doubled (exactly) for "l2"."""
        q = buffer[: (q1 - q0) * self.query.shape[1]].view(q1 - q0, -1)
        return torch.mul(self.query[q0:q1], self.q_scale[q0:q1, None] if self.cos else 2.0, out=q)

    def block(
        self, q: torch.Tensor, q0: int, r0: int, r1: int, ref_buffer: torch.Tensor, buffer: torch.Tensor
    ) -> torch.Tensor:
        """Scores of the prepared query rows `q` (rows q0...) against references r0:r1 (see `score_blocks`),
        as a (rows, `_padded(r1 - r0)`) block whose columns from r1 - r0 on hold -inf."""
        rows, width = q.shape[0], r1 - r0
        padded = buffer[: rows * _padded(width)].view(rows, -1)
        block = padded[:, :width]
        if self.cos:
            r = ref_buffer[: width * q.shape[1]].view(width, -1)
            _matmul_t(q, torch.mul(self.ref[r0:r1], self.r_scale[r0:r1, None], out=r), block)
        else:  # 2 q.r - |r|^2 - |q|^2, clamped at 0 from above
            _matmul_t(q, self.ref[r0:r1], block)
            block.sub_(self.r_sq[None, r0:r1]).sub_(self.q_sq[q0 : q0 + rows, None]).clamp_(max=0.0)
        if self.exclude_self and r0 < q0 + rows and q0 < r1:
            block.diagonal(offset=q0 - r0).fill_(float("-inf"))
        padded[:, width:].fill_(float("-inf"))
        return padded


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
    scorer = _BlockScorer(query, ref, distance, exclude_self)
    q_buffer, ref_buffer, buffer = scorer.buffers(chunk_size, ref_chunk_size)
    ref_spans = balanced_spans(ref.shape[0], ref_chunk_size)
    for q0, q1 in balanced_spans(query.shape[0], chunk_size):
        q = scorer.queries(q0, q1, q_buffer)
        for r0, r1 in ref_spans:
            yield q0, r0, scorer.block(q, q0, r0, r1, ref_buffer, buffer)[:, : r1 - r0]


# --- top k ------------------------------------------------------------------------------------------------------
# Running results are int64 keys that order (score descending, index ascending) as plain integers: the float's
# bits made order-preserving in the high half, the bit-flipped index in the low half. Keys are distinct, so
# `topk` on them is exact and no tie needs resolving.

_LOW = 0xFFFFFFFF
_EMPTY = torch.iinfo(torch.int64).min


def _keys(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 keys of (float32 score, index < 2**31) pairs; -0.0 ties with 0.0."""
    bits = (values + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits
    return (ordered.to(torch.int64) << 32) | (_LOW ^ indices)


def _key_values(keys: torch.Tensor) -> torch.Tensor:
    ordered = (keys >> 32).to(torch.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _key_indices(keys: torch.Tensor) -> torch.Tensor:
    return (keys & _LOW) ^ _LOW


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
"""Columns per group in the pre-selections of `_block_topk` and `_merge_block`."""


def _group_maxima(block: torch.Tensor) -> torch.Tensor:
    """(rows, width // GROUP) maxima of the column groups: columns j + m * n_groups, m < GROUP, form group j
    (strided, so the reduction runs along contiguous memory). The last width % GROUP columns are in no group."""
    n_groups = block.shape[1] // GROUP
    return block[:, : n_groups * GROUP].unflatten(1, (GROUP, n_groups)).amax(dim=1)


def _group_columns(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(..., GROUP) columns of each group in `groups` (...), in ascending order."""
    return groups[..., None] + n_groups * torch.arange(GROUP, device=groups.device)


def _block_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_full_topk` of a block, with most of the block skipped by an exact pre-selection.

    `torch.topk` over every score costs about a fifth of the matrix product. Instead only the k column groups
    (`_group_maxima`) with the highest maxima are searched: the k-th best score is at least the k-th largest
    group maximum (those k maxima are k distinct entries), so a group whose maximum is strictly below it holds
    nothing of the top k. Rows where the k-th and (k+1)-th maxima are equal, which could hide an equal score in
    an unsearched group, are searched in full. The candidates are gathered in ascending column order, so one
    stable sort orders them exactly.
    """
    rows, width = block.shape
    n_groups = width // GROUP
    if n_groups < 4 * (k + 1):  # too few groups for the pre-selection to pay
        return _full_topk(block, k)
    top_max, groups = _group_maxima(block).topk(k + 1, dim=1)
    columns = _group_columns(groups[:, :k].sort(dim=1).values, n_groups).transpose(1, 2).flatten(1)
    if width > n_groups * GROUP:  # the columns in no group are always candidates
        tail = torch.arange(n_groups * GROUP, width, device=block.device).expand(rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, order = block.gather(1, columns).sort(dim=1, descending=True, stable=True)
    values, columns = values[:, :k], columns.gather(1, order[:, :k])
    ambiguous = (top_max[:, k] == top_max[:, k - 1]).nonzero().flatten()
    if len(ambiguous):
        values[ambiguous], columns[ambiguous] = _full_topk(block[ambiguous], k)
    return values, columns


def _candidates(
    block: torch.Tensor, threshold: torch.Tensor, maxima: torch.Tensor, inclusive: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`(rows, columns, values)`, row by row, of the entries of a contiguous block (width a multiple of GROUP)
    above their row's threshold (or equal to it, with `inclusive`), found through the group maxima `maxima`: a
    group whose maximum does not pass holds nothing that does. None when so many groups pass that gathering
    them would take more memory than the block itself."""
    width = block.shape[1]
    n_groups = width // GROUP
    passes = torch.ge if inclusive else torch.gt
    hits = passes(maxima, threshold[:, None]).view(-1).nonzero().squeeze(1)  # row * n_groups + group
    if len(hits) * GROUP * 3 > block.numel():  # the three (hits, GROUP) tensors below, of 4 or 8 bytes each
        return None
    rows = hits // n_groups
    flat = _group_columns(hits + rows * (width - n_groups), n_groups).view(-1)  # row * width + column
    values = block.view(-1).index_select(0, flat)
    kept = passes(values.view(-1, GROUP), threshold.index_select(0, rows)[:, None]).view(-1).nonzero().squeeze(1)
    flat = flat.index_select(0, kept)
    return flat // width, flat % width, values.index_select(0, kept)


def _merge_block(best: torch.Tensor | None, block: torch.Tensor, width: int, r0: int, k: int) -> torch.Tensor:
    """The running top k (keys, descending, (rows, <= k)) updated with the scores of references r0:r0 + width,
    the first `width` columns of `block` (contiguous; the other columns, if any, hold -inf).

    Entries are pre-selected by a threshold per row (`_candidates`). Once a row holds k keys, only entries
    strictly above its k-th score can enter (an equal score has a higher index, so it ranks below); in the
    first block, the k-th largest group maximum is a lower bound of the k-th best score (those k maxima are k
    distinct entries), so entries at or above it are kept. The candidates go into a padded
    (rows, k + most) key table, with the running keys, and its `topk` is the new top k. When that does not
    apply (narrow blocks) or too many entries pass, the block's own top k (`_block_topk`) is merged instead.
    """
    found, full = None, best is not None and best.shape[1] == k
    if full or (best is None and block.shape[1] // GROUP >= k):
        maxima = _group_maxima(block)
        threshold = _key_values(best[:, -1]) if full else maxima.topk(k, dim=1).values[:, -1]
        if full or bool((threshold > float("-inf")).all()):  # a -inf bound would let the -inf padding in
            found = _candidates(block, threshold, maxima, inclusive=not full)
    if found is not None:
        rows, columns, values = found
        if not len(rows):
            return best
        touched, inverse, counts = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
        slot = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[inverse]
        kept = 0 if best is None else k
        table = torch.full((len(touched), kept + int(counts.max())), _EMPTY, device=block.device)
        if kept:
            table[:, :kept] = best.index_select(0, touched)
        table.view(-1)[inverse * table.shape[1] + kept + slot] = _keys(values, columns + r0)
        top = table.topk(k, dim=1).values
        return top if best is None else best.index_copy_(0, touched, top)  # first block: every row has >= k
    # -inf pad columns rank below every real column (higher index), so they matter only when a row has fewer
    # than k real columns
    values, columns = _block_topk(block if width >= k else block[:, :width], k)
    keys = _keys(values, columns + r0)
    if best is None:
        return keys
    merged = torch.cat([best, keys], dim=1)
    return merged.topk(min(k, merged.shape[1]), dim=1).values


# --- workers ----------------------------------------------------------------------------------------------------


@cache
def _blas_controller():
    """The BLAS libraries loaded in this process (found once: the search is far longer than the lookup)."""
    return ThreadpoolController()


@contextmanager
def _threads_per_call(threads: int) -> Iterator[None]:
    """Run torch operations and BLAS calls with `threads` threads each, restoring the previous settings."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if ThreadpoolController is None:  # BLAS keeps its own thread count: slower, same results
            yield
        else:
            with _blas_controller().limit(limits=threads, user_api="blas"):
                yield
    finally:
        torch.set_num_threads(before)


def _run_workers(work: Callable[[Callable[[], tuple[int, int] | None]], None], spans, workers: int) -> None:
    """Call `work(next_span)` in `workers` threads, this one included, sharing out `spans`: each takes the
    next span free, so a worker slowed down by other processes on the machine simply does fewer."""
    lock, pending = threading.Lock(), iter(spans)

    def next_span() -> tuple[int, int] | None:
        with lock:
            return next(pending, None)

    if workers == 1:
        work(next_span)
        return
    with ThreadPoolExecutor(workers - 1, thread_name_prefix="hf_metric-knn") as pool:
        others = [pool.submit(work, next_span) for _ in range(workers - 1)]
        work(next_span)  # this thread is a worker too: one thread fewer to start and to give memory to
        for future in others:
            future.result()


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
        ref_chunk_size: references per block (default `CPU_REF_CHUNK_SIZE` on CPU, else
            `DEFAULT_REF_CHUNK_SIZE`). Peak extra memory is about one chunk_size x ref_chunk_size float32 block
            per worker, plus the (N_query, k) result.

    On CPU the query chunks are shared out among `torch.get_num_threads()` worker threads, each running
    single-threaded operations (module doc); on other devices one loop issues the blocks in order.

    Returns:
        `(scores, indices)`, both (N_query, min(k, available)) on the device of `query`: cosine similarities in
        descending order for "cos", Euclidean distances in ascending order for "l2"; int64 reference indices.
        Ties (equal float32 scores; for "l2" equal squared distances) are ordered by reference index, lowest
        first, so the result does not depend on the chunk sizes.
    """
    device = query.device if isinstance(query, torch.Tensor) else None
    q, r = as_float_tensor(query, device), as_float_tensor(ref, device)
    _check_inputs(q, r, distance, exclude_self)
    scorer = _BlockScorer(q, r, distance, exclude_self)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if r.shape[0] >= 2**31:
        raise ValueError(f"at most 2**31 - 1 reference rows are supported, got {r.shape[0]}")
    k = min(k, r.shape[0] - int(exclude_self))
    n_query = q.shape[0]
    scores = torch.empty(n_query, max(k, 0), dtype=torch.float32, device=q.device)
    indices = torch.empty(n_query, max(k, 0), dtype=torch.int64, device=q.device)
    if k > 0 and n_query:
        cpu = q.device.type == "cpu"
        threads = torch.get_num_threads() if cpu else 1
        ref_chunk_size = ref_chunk_size or (CPU_REF_CHUNK_SIZE if cpu else DEFAULT_REF_CHUNK_SIZE)
        chunk_size = chunk_size or default_chunk_size(q, r, ref_chunk_size, threads)
        if chunk_size < 1 or ref_chunk_size < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {chunk_size}, {ref_chunk_size}")
        ref_spans = balanced_spans(r.shape[0], ref_chunk_size)
        parts = -(-n_query // chunk_size)
        parts = min(n_query, -(-parts // threads) * threads)  # a multiple of the workers: none idles at the end
        spans = balanced_spans(n_query, -(-n_query // parts))

        def work(next_span: Callable[[], tuple[int, int] | None]) -> None:
            q_buffer, ref_buffer, buffer = scorer.buffers(chunk_size, ref_chunk_size)
            while (span := next_span()) is not None:
                q0, q1 = span
                chunk, best = scorer.queries(q0, q1, q_buffer), None
                for r0, r1 in ref_spans:
                    block = scorer.block(chunk, q0, r0, r1, ref_buffer, buffer)
                    best = _merge_block(best, block, r1 - r0, r0, k)
                scores[q0:q1], indices[q0:q1] = _key_values(best), _key_indices(best)

        if cpu:
            workers = min(threads, len(spans))
            with _threads_per_call(threads // workers):
                _run_workers(work, spans, workers)
        else:
            _run_workers(work, spans, 1)  # in this thread, on its current stream
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
