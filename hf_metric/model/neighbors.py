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

from .topk_merge import _block_topk, _key_indices, _key_values, _merge_block

try:  # optional where this file is shipped as a model's remote code (`trust_remote_code`) without hf_metric
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - hf_metric itself depends on threadpoolctl
    ThreadpoolController = None

Distance = Literal["cos", "l2"]

DEFAULT_CHUNK_SIZE = 4096
"""Queries per chunk (at most)."""
CPU_CHUNK_SIZE = 2048
"""Queries per chunk (at most) of the search on CPU: as fast as 4096 (1.90 vs 1.89 CPU s, float32, 4096 x 50k x
384) at half the working memory (30k x 30k x 384: 38 vs 71 MB over the data)."""
MIN_CHUNK_SIZE = 256
"""The default chunk never goes below this, however small the data: thinner products run slower."""
CPU_REF_CHUNK_SIZE = 1024
"""References per block of the search on CPU. A chunk_size x 1024 block is still in the CPU cache when the
pass after the product reads it (faiss uses 4096 x 1024 blocks for the same reason), and the running
threshold of `_merge_block` tightens after every block."""
DEFAULT_REF_CHUNK_SIZE = 16384
"""References per block elsewhere: `score_blocks`, and the search on other devices, where fewer and larger
operations (and fewer waits for the device) pay more than the cache."""
SMALL_SEARCH_SCORES = 1 << 22
"""A cosine search on CPU with at most this many scores (64 queries x 65k stored rows) is one product and one
top k: blocks and workers pay only on large searches (`bench/knn_small_search.py`: 17.0 vs 6.5 ms, 64 x 10k)."""
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
of `topk_merge._group_maxima` then reduce contiguous rows of GROUP-column-aligned vectors, several times faster than on
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

    def whole(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top k of every query from one product (cosine; `SMALL_SEARCH_SCORES`), ties ordered as by the blocks."""
        scores = torch.mm(self.query * self.q_scale[:, None], self.ref.T).mul_(self.r_scale)  # no scaled copy of ref
        if self.exclude_self:
            scores.fill_diagonal_(float("-inf"))
        return _block_topk(scores, k)


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
    inference = torch.is_inference_mode_enabled()

    def in_callers_mode(take: Callable[[], tuple[int, int] | None]) -> None:
        # grad and inference modes are per thread: a worker writing into the caller's inference-mode result
        # tensors must be in inference mode too
        with torch.inference_mode(inference), torch.no_grad():
            work(take)

    with ThreadPoolExecutor(workers - 1, thread_name_prefix="hf_metric-knn") as pool:
        others = [pool.submit(in_callers_mode, next_span) for _ in range(workers - 1)]
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
    small = distance == "cos" and q.device.type == "cpu" and n_query * r.shape[0] <= SMALL_SEARCH_SCORES
    if k > 0 and n_query and small and chunk_size is None and ref_chunk_size is None:
        scores, indices = scorer.whole(k)
    elif k > 0 and n_query:
        cpu = q.device.type == "cpu"
        threads = torch.get_num_threads() if cpu else 1
        ref_chunk_size = ref_chunk_size or (CPU_REF_CHUNK_SIZE if cpu else DEFAULT_REF_CHUNK_SIZE)
        default = default_chunk_size(q, r, ref_chunk_size, threads)
        chunk_size = chunk_size or (min(default, CPU_CHUNK_SIZE) if cpu else default)
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
