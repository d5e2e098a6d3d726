"""Exact cosine top k through bf16 candidates: a bf16 matrix product picks candidates, float32 ranks them.

On CPUs with bf16 dot-product instructions (AVX512-BF16, AMX) a bf16 matrix product runs about 2.1x faster per
thread than the float32 one (measured: 196 vs 92 GFLOPS on an AMD EPYC core, oneDNN vs OpenBLAS). Its scores
are inexact, so they only choose candidates, and the result stays the exact float32 top k:

1. Every prepared (unit) query q and reference r is rounded to bf16 (q', r'); the bf16 product gives
   a = round_bf16(x) of x = q'.r' accumulated in float32. Against the float32 score s of step 3,
   ``|a - s| <= E + c |a|`` with ``E = e_q |r'| + |q| e_r + 2 dim 2^-24 |q'| |r'|`` and c = 2^-9 / (1 - 2^-9):
   ``q'.r' - q.r = (q' - q).r' + q.(r' - r)`` (Cauchy-Schwarz, with e_q = |q' - q| and e_r = |r' - r| the
   measured rounding errors of each row), float32 summation (dim 2^-24 relative, once for x and once for s),
   and the rounding of x to bf16 (relative 2^-9 of |x|, so c of |a|). Per query, the maxima of |r'| and e_r
   over all references are used.
2. The running top (k + m) of the approximate scores is kept (`topk_merge._merge_block`), A_k its k-th and
   A_last its last score. The k listed rows with a >= A_k have s >= A_k - E - c |A_k| =: L (a - c |a| grows
   with a), so the k-th best s is >= L, and a true top-k row j has a_j + c |a_j| >= s_j - E >= L - E =: M, i.e.
   a_j >= floor = M / (1 + c) (M >= 0) or M / (1 - c) (M < 0). Every row outside the list has a <= A_last,
   so when A_last < floor the list holds the whole exact top k, ties included; only its rows with
   a >= floor (a prefix: the list is sorted) are re-scored.
3. The listed rows are scored in float32 (the same products for identical rows, so ties stay ties) and the top
   k is taken under (score descending, index ascending), as in the float32 search.

Queries whose margin check fails (dense neighbourhoods, near-duplicates) are searched again in float32; the
result never depends on the bf16 step, only the time does.
"""

from __future__ import annotations

import sys
from functools import cache

import torch

from .topk_merge import _key_indices, _key_values, _keys, _merge_block

EXTRA_CANDIDATES = 24
"""m: candidates kept beyond k. More make the margin check pass more often but cost a wider merge and more
float32 re-scoring (measured on 384-wide clustered data: 24 leaves < 1 % of queries to the float32 fallback)."""
RERANK_ROWS = 64
"""Queries re-scored at once: their (rows, k + m, dim) gathered references stay a few MB."""
CHUNK_SIZE = 1024
"""Queries per chunk (at most): a bf16 chunk holds more working memory than a float32 one (bf16 copies, the
product's own buffers). Measured at 50k x 50k x 384 (146 MB of data): 69 MB over the data with 1024-row chunks,
80 MB with 2048; speed 0.85x vs 0.80x the float32 path's CPU time (4096 x 50k, one thread)."""
_OUTPUT_REL = 2.0**-9 / (1 - 2.0**-9)  # bf16 keeps 8 significant bits: rounding moves x by <= 2^-9 |x|
_F32_UNIT = 2.0**-24


@cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU advertises bf16 dot-product instructions (Linux /proc/cpuinfo flags)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def rounding_errors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bf16 copy x', |x' - x|, |x'|) of the rows of float32 `x`."""
    low = x.to(torch.bfloat16)
    wide = low.float()  # x' - x is exact in float32 (at most 16 significant bits); the norms' error is ~dim 2^-24
    return low, torch.linalg.vector_norm(wide - x, dim=1), torch.linalg.vector_norm(wide, dim=1)


class Bf16Bounds:
    """Reference-side maxima of the error bound (module doc, step 1), found once per search in slices."""

    def __init__(self, scorer, ref_chunk_size: int) -> None:
        from .neighbors import balanced_spans  # neighbors imports this module

        r_err = r_norm = 0.0
        for r0, r1 in balanced_spans(scorer.ref.shape[0], min(ref_chunk_size, 2048)):
            _, err, norm = rounding_errors(scorer.ref[r0:r1] * scorer.r_scale[r0:r1, None])
            r_err, r_norm = max(r_err, float(err.max())), max(r_norm, float(norm.max()))
        self.r_err, self.r_norm, self.dim = r_err, r_norm, scorer.ref.shape[1]

    def eps(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bf16 copy of the prepared queries `q`, per-query E of the module doc with a 1 % safety margin)."""
        low, q_err, q_low_norm = rounding_errors(q)
        q_norm = torch.linalg.vector_norm(q, dim=1)
        eps = q_err * self.r_norm + q_norm * self.r_err + 2 * self.dim * _F32_UNIT * q_low_norm * self.r_norm
        return low, eps * 1.01 + 1e-7

    @staticmethod
    def floor(kth: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The bf16 score below which a row cannot be in the exact top k (module doc, step 2)."""
        c = _OUTPUT_REL * 1.01
        m = kth - eps - c * kth.abs() - eps
        return torch.where(m >= 0, m / (1 + c), m / (1 - c))


def bf16_chunk_topk(scorer, q: torch.Tensor, q0: int, ref_spans, k: int, bounds: Bf16Bounds, buffers):
    """Exact top-k keys (rows, k) of the prepared query rows `q` (rows q0...), cosine scores (module doc)."""
    ref_buffer, buffer = buffers
    rows, dim = q.shape
    q_low, eps = bounds.eps(q)
    wide = min(k + EXTRA_CANDIDATES, scorer.ref.shape[0])
    best, widest = None, max(r1 - r0 for r0, r1 in ref_spans)
    r_low, out = torch.empty(widest * dim, dtype=torch.bfloat16), torch.empty(rows * widest, dtype=torch.bfloat16)
    for r0, r1 in ref_spans:
        width = r1 - r0
        r = ref_buffer[: width * dim].view(width, dim)
        torch.mul(scorer.ref[r0:r1], scorer.r_scale[r0:r1, None], out=r)
        low = r_low[: width * dim].view(width, dim).copy_(r)
        approx = torch.mm(q_low, low.T, out=out[: rows * width].view(rows, width))
        padded = buffer[: rows * _padded_width(width)].view(rows, -1)
        padded[:, :width].copy_(approx)
        padded[:, width:].fill_(float("-inf"))
        if scorer.exclude_self and r0 < q0 + rows and q0 < r1:
            padded[:, :width].diagonal(offset=q0 - r0).fill_(float("-inf"))
        if best is None:  # any top `wide` by value will do here (ties need no order): a plain topk, in slices
            slices = range(0, rows, RERANK_ROWS)
            tops = [padded[s0 : s0 + RERANK_ROWS, :width].topk(min(wide, width), dim=1) for s0 in slices]
            best = torch.cat([_keys(v, c + r0) for v, c in tops])
            best = best.topk(best.shape[1], dim=1).values
        else:
            best = _merge_block(best, padded, width, r0, wide)
    candidates, values = _key_indices(best), _key_values(best)
    floor = bounds.floor(values[:, k - 1], eps)  # a row scoring below this in bf16 is not in the exact top k
    complete = wide == scorer.ref.shape[0]
    safe = torch.ones(rows, dtype=torch.bool) if complete else values[:, -1] < floor
    needed = (values >= floor[:, None]).sum(dim=1)  # the list is sorted: only this prefix needs re-scoring
    keys = torch.empty(rows, k, dtype=torch.int64)
    for s0 in range(0, rows, RERANK_ROWS):
        s1 = min(rows, s0 + RERANK_ROWS)
        width = max(k, int(needed[s0:s1].max()))
        keys[s0:s1] = rerank(scorer, q[s0:s1], q0 + s0, candidates[s0:s1, :width], k)
    redo = (~safe).nonzero().squeeze(1)
    if len(redo):
        keys[redo] = exact_rows(scorer, q, q0, redo, ref_spans, k, buffers)
    return keys


def rerank(scorer, q: torch.Tensor, q0: int, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k keys of the float32 scores of `candidates` (rows, c): one elementwise product and row sum per
    pair, so identical reference rows get identical scores."""
    flat = candidates.reshape(-1)
    r = scorer.ref.index_select(0, flat) * scorer.r_scale.index_select(0, flat)[:, None]
    scores = (r.view(*candidates.shape, -1) * q[:, None, :]).sum(dim=2)
    if scorer.exclude_self:
        own = torch.arange(q0, q0 + q.shape[0])[:, None]
        scores.masked_fill_(candidates == own, float("-inf"))
    return _keys(scores, candidates).topk(k, dim=1).values


def exact_rows(scorer, q: torch.Tensor, q0: int, rows: torch.Tensor, ref_spans, k: int, buffers) -> torch.Tensor:
    """Float32 top-k keys of the prepared query rows `q[rows]` (query indices q0 + rows), block by block."""
    from .neighbors import _matmul_t

    ref_buffer, buffer = buffers
    sub, dim, best = q.index_select(0, rows).contiguous(), q.shape[1], None
    own = rows + q0
    for r0, r1 in ref_spans:
        width = r1 - r0
        r = torch.mul(scorer.ref[r0:r1], scorer.r_scale[r0:r1, None], out=ref_buffer[: width * dim].view(width, dim))
        padded = buffer[: len(rows) * _padded_width(width)].view(len(rows), -1)
        _matmul_t(sub, r, padded[:, :width])
        padded[:, width:].fill_(float("-inf"))
        if scorer.exclude_self:
            inside = ((own >= r0) & (own < r1)).nonzero().squeeze(1)
            padded[inside, own[inside] - r0] = float("-inf")
        best = _merge_block(best, padded, width, r0, k)
    return best


def _padded_width(width: int) -> int:
    from .neighbors import _padded

    return _padded(width)
