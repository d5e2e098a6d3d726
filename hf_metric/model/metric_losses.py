"""Metric losses on L2-normalised embeddings: `loss.per_anchor(embeddings, labels, mask, candidates=None,
self_index=None) -> (per_row, valid)`, and `loss.num_anchors(labels, mask)`, the number of valid rows
`per_anchor` would return (the trainer normalises over a gradient-accumulation window with it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .masking import Candidates, masked_mean
from .precision import float32_math


class _Pairs(NamedTuple):
    """Anchor x candidate cosine similarities and which pairs count."""

    sim: torch.Tensor  # (anchors, candidates), float32 (or float64) cosines
    allowed: torch.Tensor  # both rows in the loss, and not the same row
    positive: torch.Tensor  # allowed and same label
    negative: torch.Tensor  # allowed and different label


def _pairs(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    candidates: Candidates | None,
    self_index: torch.Tensor | None,
) -> _Pairs:
    """Cosines of L2-normalised anchors against candidates (the anchors themselves by default), with the pairs.

    Rows with a label < 0 (-100: no label), `mask == 0` (anchors) or a false candidate mask are in no pair. The
    pair (i, self_index[i]) is the anchor with itself and never counts.
    """
    anchor_valid = labels >= 0 if mask is None else (labels >= 0) & mask.bool()
    if candidates is None:
        cand_emb, cand_labels, cand_valid = embeddings, labels, anchor_valid
        self_index = torch.arange(len(labels), device=labels.device)
    else:
        cand_emb, cand_labels, cand_mask = candidates
        cand_valid = cand_labels >= 0 if cand_mask is None else (cand_labels >= 0) & cand_mask.bool()
        if self_index is None:
            self_index = torch.full_like(labels, -1)
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    z = F.normalize(embeddings.to(dtype), dim=-1)
    zc = F.normalize(cand_emb.to(dtype), dim=-1)
    not_self = torch.arange(zc.shape[0], device=z.device)[None, :] != self_index[:, None]
    allowed = anchor_valid[:, None] & cand_valid[None, :] & not_self
    same = labels[:, None] == cand_labels[None, :]
    return _Pairs(z @ zc.T, allowed, allowed & same, allowed & ~same)


def _label_pairs(
    labels: torch.Tensor, mask: torch.Tensor | None, extra_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) pair masks of the batch's rows against the batch's rows and `extra_labels` (candidates
    that are never anchors, e.g. a memory of past batches), from labels and mask alone (for `num_anchors`)."""
    valid = labels >= 0 if mask is None else (labels >= 0) & mask.bool()
    cand_labels, cand_valid = labels, valid
    if extra_labels is not None:
        cand_labels = torch.cat([labels, extra_labels.to(labels.device)])
        cand_valid = torch.cat([valid, cand_labels[len(labels) :] >= 0])
    allowed = valid[:, None] & cand_valid[None, :]
    allowed[:, : len(labels)].fill_diagonal_(False)
    same = labels[:, None] == cand_labels[None, :]
    return allowed & same, allowed & ~same


def same_group_first(
    negative: torch.Tensor, labels: torch.Tensor, cand_labels: torch.Tensor, class_groups: torch.Tensor
) -> torch.Tensor:
    """The negatives of each anchor restricted to the classes of its own group (`class_groups`: class id -> group
    index, -1 none) when it has any there, else all its negatives: confusable classes are mined first."""
    groups = class_groups.to(labels.device)

    def group_of(ids: torch.Tensor) -> torch.Tensor:
        inside = (ids >= 0) & (ids < len(groups))
        return torch.where(inside, groups[ids.clamp(0, len(groups) - 1)], torch.full_like(ids, -1))

    anchor_group, cand_group = group_of(labels), group_of(cand_labels)
    same = negative & (anchor_group[:, None] == cand_group[None, :]) & (anchor_group[:, None] >= 0)
    return torch.where(same.any(dim=1, keepdim=True), same, negative)


class MetricLoss(nn.Module):
    """Base of metric losses: subclasses implement `pair_losses(pairs) -> (per_row, valid)` on the cosines and
    positive/negative pair masks that `per_anchor(embeddings, labels, mask, candidates=None, self_index=None)`
    builds (in float32, rows outside the loss excluded), or override `per_anchor` itself.

    `num_anchors` must count the rows `per_anchor` marks valid, from labels and mask alone (the trainer uses it
    to normalise over a gradient-accumulation window before any forward pass), also when `extra_labels` (the
    labels of extra candidates, such as the memory of `training.bank_negatives`) are given; the default counts
    rows with at least one positive, override it when your anchors need something else.

    A loss whose `same_group_first` is true mines its negatives inside the anchor's group first (see
    `same_group_first`) once `use_class_groups` gave it the group of each class (the objective does, from the
    data's `group` column).
    """

    same_group_first: bool = False

    def use_class_groups(self, class_group_ids: list[int]) -> None:
        """Group index of each class id (-1: none), for `same_group_first` mining; a buffer, so it follows the
        model to its device."""
        self.register_buffer("class_groups", torch.tensor(class_group_ids, dtype=torch.int64), persistent=False)

    @staticmethod
    def num_anchors(
        labels: torch.Tensor, mask: torch.Tensor | None = None, extra_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        positive, _ = _label_pairs(labels, mask, extra_labels)
        return positive.any(dim=1).sum()

    @staticmethod
    def pairs(
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> _Pairs:
        return _pairs(embeddings, labels, mask, candidates, self_index)

    @float32_math
    def per_anchor(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count: `pair_losses` on this batch's pairs, zero where not valid."""
        pairs = _pairs(embeddings, labels, mask, candidates, self_index)
        class_groups = getattr(self, "class_groups", None)  # a buffer once `use_class_groups` ran
        if self.same_group_first and class_groups is not None:
            cand_labels = labels if candidates is None else candidates[1]
            pairs = pairs._replace(negative=same_group_first(pairs.negative, labels, cand_labels, class_groups))
        per_row, valid = self.pair_losses(pairs)
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid

    def pair_losses(self, pairs: _Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """`(per_row, valid)` from the anchors' cosines and pair masks; implement this (or `per_anchor`)."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(*self.per_anchor(embeddings, labels, mask))


class SupConLoss(MetricLoss):
    r"""Supervised contrastive loss (Khosla et al., 2020, "Supervised Contrastive Learning", eq. 2, L_out).

    For each anchor i with at least one positive:

    .. math::
        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log
            \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)}

    where z are L2-normalized embeddings, A(i) all candidate rows but i itself, and P(i) the candidates with
    the label of i. Rows with `mask == 0` are neither anchors nor candidates, so they get no gradient. Anchors
    with no positive are skipped; a batch without any positive pair gives 0. It needs batches with several
    rows per class: use P x K batches (`ClassBalancedBatchSampler`).

    Candidates default to the anchors themselves; pass `candidates` (e.g. embeddings gathered from every
    process) with `self_index` (the position of each anchor among the candidates, -1 for none) to contrast
    local anchors against a larger set.

    Example::

        loss_fn = SupConLoss(temperature=0.1)
        loss = loss_fn(F.normalize(emb, dim=-1), labels)
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def pair_losses(self, pairs: _Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with at least one positive)."""
        sim = pairs.sim / self.temperature
        # Rows with no candidate at all get a finite dummy row, so that logsumexp never sees only -inf.
        has_candidate = pairs.allowed.any(dim=1, keepdim=True)
        logits = torch.where(pairs.allowed, sim, torch.full_like(sim, float("-inf")))
        logits = torch.where(has_candidate, logits, torch.zeros_like(sim))
        log_prob = sim - torch.logsumexp(logits, dim=1, keepdim=True)
        n_pos = pairs.positive.sum(dim=1)
        pos_sum = torch.where(pairs.positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        return -pos_sum / n_pos.clamp(min=1), n_pos > 0


class TripletMarginLoss(MetricLoss):
    r"""Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss for Person
    Re-Identification", eq. 5).

    For each anchor a, its hardest positive (the farthest row with its label) and hardest negative (the nearest
    row with another label):

    .. math:: \ell_a = \big[\max_{p \in P(a)} d(a, p) - \min_{n \in N(a)} d(a, n) + \text{margin}\big]_+

    on L2-normalised embeddings, with `distance="euclidean"` (default; ||z_a - z_b||, in [0, 2], as
    pytorch-metric-learning's default `LpDistance(normalize_embeddings=True)`) or `"cosine"` (1 - cos, in
    [0, 2]). `soft=True` uses the paper's soft margin log(1 + exp(.)) instead of the hinge. An anchor counts if it
    is in the loss (`mask`) and has at least one positive and one negative; the mean is over those anchors,
    including the ones already satisfied with zero loss (as in the paper; pml's `TripletMarginLoss` averages
    only the non-zero ones by default). The margin is 0.2 (FaceNet's on normalised embeddings); pml's is 0.05.

    `candidates`/`self_index` work as in `SupConLoss`: positives and negatives are mined among the candidates.
    `same_group_first=True` takes the hardest negative among the classes of the anchor's own group when there is
    one (grouped identification: the confusable neighbours), else among all.
    """

    DISTANCES = ("euclidean", "cosine")

    def __init__(
        self, margin: float = 0.2, distance: str = "euclidean", soft: bool = False, same_group_first: bool = False
    ) -> None:
        super().__init__()
        self.same_group_first = same_group_first
        if distance not in self.DISTANCES:
            raise ValueError(f"distance must be one of {self.DISTANCES}, got {distance!r}")
        self.margin = float(margin)
        self.distance = distance
        self.soft = soft

    @staticmethod
    def num_anchors(
        labels: torch.Tensor, mask: torch.Tensor | None = None, extra_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """In-loss rows with at least one in-loss positive and one in-loss negative."""
        positive, negative = _label_pairs(labels, mask, extra_labels)
        return (positive.any(dim=1) & negative.any(dim=1)).sum()

    def distances(self, sim: torch.Tensor) -> torch.Tensor:
        """Distance matrix from cosines of unit vectors; the euclidean one has a finite gradient at 0."""
        if self.distance == "cosine":
            return 1 - sim
        squared = (2 - 2 * sim).clamp(min=0)
        eps = 1e-12
        return torch.where(squared > eps, squared.clamp(min=eps).sqrt(), torch.zeros_like(squared))

    def pair_losses(self, pairs: _Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with a positive and a negative)."""
        dist = self.distances(pairs.sim)
        has_pos, has_neg = pairs.positive.any(dim=1), pairs.negative.any(dim=1)
        # Out-of-set entries get a value that can never be chosen; rows with none are zeroed below.
        hardest_pos = torch.where(pairs.positive, dist, torch.full_like(dist, -1.0)).amax(dim=1)
        hardest_neg = torch.where(pairs.negative, dist, torch.full_like(dist, 3.0)).amin(dim=1)
        violation = hardest_pos - hardest_neg + self.margin
        per_row = F.softplus(violation) if self.soft else F.relu(violation)
        return per_row, has_pos & has_neg


class MultiSimilarityLoss(MetricLoss):
    r"""Multi-similarity loss (Wang et al. 2019, "Multi-Similarity Loss with General Pair Weighting for Deep
    Metric Learning", eq. 8), over all pairs (without the paper's pair miner), as pytorch-metric-learning's
    `MultiSimilarityLoss`.

    With S_ik the cosine between anchor i and candidate k, P(i) its positives and N(i) its negatives:

    .. math::
        \ell_i = \frac{1}{\alpha} \log\Big[1 + \sum_{k \in P(i)} e^{-\alpha (S_{ik} - \lambda)}\Big]
               + \frac{1}{\beta} \log\Big[1 + \sum_{k \in N(i)} e^{\beta (S_{ik} - \lambda)}\Big]

    (lambda = `base`). The soft-max weighting makes the hardest pairs of each anchor dominate the gradient.
    An anchor counts if it is in the loss and has at least one positive or one negative (an empty sum gives a
    zero term); pml's mean is over every row, which is the same when every row has a pair.
    Defaults alpha = 2, beta = 50, base = 0.5 are pml's (the paper uses alpha = 2, beta = 50, lambda = 1).

    `candidates`/`self_index` work as in `SupConLoss`. `same_group_first=True` keeps only the negatives of the
    anchor's own group in the negative term when it has any (else all), as `TripletMarginLoss`.
    """

    def __init__(
        self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, same_group_first: bool = False
    ) -> None:
        super().__init__()
        self.same_group_first = same_group_first
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got {alpha}, {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)

    @staticmethod
    def num_anchors(
        labels: torch.Tensor, mask: torch.Tensor | None = None, extra_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """In-loss rows with at least one other in-loss row (a positive or a negative)."""
        positive, negative = _label_pairs(labels, mask, extra_labels)
        return (positive.any(dim=1) | negative.any(dim=1)).sum()

    @staticmethod
    def _log1p_sum_exp(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """log(1 + sum_{keep} exp(x)) per row, stably; 0 for rows with nothing kept."""
        x = torch.where(keep, x, torch.full_like(x, float("-inf")))
        return torch.logsumexp(torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1), dim=1)

    def pair_losses(self, pairs: _Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with at least one pair)."""
        pos_term = self._log1p_sum_exp(-self.alpha * (pairs.sim - self.base), pairs.positive) / self.alpha
        neg_term = self._log1p_sum_exp(self.beta * (pairs.sim - self.base), pairs.negative) / self.beta
        return pos_term + neg_term, pairs.allowed.any(dim=1)
