"""The merge step of the exact top-k search (`neighbors.topk_neighbors`): each block of scores is reduced to
its candidates and merged into the running top k of every query, exactly and in a deterministic tie order.

Running results are int64 keys that order (score descending, index ascending) as plain integers: the float's
bits made order-preserving in the high half, the bit-flipped index in the low half. Keys are distinct, so
`topk` on them is exact and no tie needs resolving.
"""

from __future__ import annotations

import torch

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
