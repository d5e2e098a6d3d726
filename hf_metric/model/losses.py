"""Masked losses on plain tensors, usable without the trainer.

Every loss here works per row and returns `(per_row_loss, valid)`: the trainer needs the sum and the count
separately to normalise over a whole gradient-accumulation window (and over processes), so that 2 x 8 rows
give the same update as 16. `masked_mean` turns that pair into the usual scalar; a batch with no valid row
gives 0, never NaN.

Classification losses (`build_classification_loss`): `ce`, `focal`; they take logits, labels and the
classifier mask: `loss.per_row(logits, labels, mask)`.

Metric losses (`build_metric_loss`): `supcon`, `triplet`, `multi_similarity`; they take embeddings, labels and
the metric mask: `loss.per_anchor(embeddings, labels, mask, candidates=None, self_index=None)`, and count their
anchors with `loss.num_anchors(labels, mask)` (the number of valid rows `per_anchor` would return).

Rows labelled -100 (or any label < 0) and rows with mask 0 never count, neither as anchors nor as candidates:
-100 is no class. Every loss computes in float32 with autocast off (`precision.float32_math`; float64 inputs
stay float64) and returns float32 for half-precision inputs, so fp16/bf16 training gives the float32 loss and
finite gradients (zero-distance pairs and batches without positives or negatives included).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .precision import compute_dtype, float32_math
from .registry import Registry

Candidates = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""`(embeddings, labels, mask or None)` of the rows the anchors are compared with (e.g. gathered from all
processes); `self_index` then gives the position of each anchor among them (-1 for none)."""


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over rows where `valid` is true; 0 (with a zero gradient) when no row is valid."""
    valid = valid.bool()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1)


def _valid_rows(labels: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows a classification loss counts (label >= 0 and mask != 0), and labels safe to index with."""
    valid = labels >= 0
    if mask is not None:
        valid = valid & mask.bool()
    return valid, torch.where(valid, labels, torch.zeros_like(labels))


@float32_math
def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy on raw logits (computed in float32) and the rows it counts for.

    Rows with `mask == 0` (e.g. `classifier_mask = 0`: unverified labels) and rows with label -100 are
    excluded; they get a zero loss and pass no gradient to the classifier. `label_smoothing` (Szegedy et al.
    2016) mixes the one-hot target with the uniform distribution, as in `F.cross_entropy`.
    """
    valid, safe_labels = _valid_rows(labels, mask)
    logits = logits.to(compute_dtype(logits))
    per_row = F.cross_entropy(logits, safe_labels, reduction="none", label_smoothing=label_smoothing)
    return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


class ClassificationLoss(nn.Module):
    """Base of classification losses: subclasses implement `per_row(logits, labels, mask) -> (per_row, valid)`
    (rows with label < 0 or mask 0 are not valid); `forward` is their masked mean."""

    def per_row(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(*self.per_row(logits, labels, mask))


class CrossEntropyLoss(ClassificationLoss):
    """Masked cross-entropy with optional label smoothing (`ce`); see `masked_cross_entropy`."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def per_row(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_cross_entropy(logits, labels, mask, label_smoothing=self.label_smoothing)


class FocalLoss(ClassificationLoss):
    r"""Softmax focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5), masked.

    .. math:: \mathrm{FL}(p_t) = -\alpha_t (1 - p_t)^\gamma \log p_t

    with p_t the softmax probability of the true class. The factor (1 - p_t)^gamma down-weights rows the model
    already gets right, so training focuses on hard (often minority-class) rows; gamma = 0 and alpha = None is
    plain cross-entropy. The paper's alpha is binary (alpha for the positive class, 1 - alpha for the
    negative); here `alpha` is either a scalar applied to every row or a per-class list/tensor indexed by the
    true class (e.g. inverse class frequencies). `alpha=None` means no weighting. Rows with label -100 or
    `mask == 0` count for nothing. Computed in float32.
    """

    alpha: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: float | list[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if alpha_t is not None and alpha_t.dim() > 1:
            raise ValueError(f"alpha must be a scalar or a per-class vector, got shape {tuple(alpha_t.shape)}")
        # Not persistent: a loss option, not model state; a buffer still follows `.to(device)`.
        self.register_buffer("alpha", alpha_t, persistent=False)

    @float32_math
    def per_row(
        self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid, safe = _valid_rows(labels, mask)
        log_pt = F.log_softmax(logits.to(compute_dtype(logits)), dim=-1).gather(1, safe[:, None]).squeeze(1)
        per_row = -log_pt
        if self.gamma != 0:
            # 1 - p_t via expm1 is exact for p_t near 1; the clamp keeps (1 - p_t)^gamma's gradient finite there.
            one_minus_pt = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)
            per_row = one_minus_pt**self.gamma * per_row
        if self.alpha is not None:
            alpha = self.alpha.to(per_row.device)
            per_row = per_row * (alpha if alpha.dim() == 0 else alpha[safe])
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


CLASSIFICATION_LOSSES = Registry("classification loss", {"ce": CrossEntropyLoss, "focal": FocalLoss})
"""Name -> classification loss: `ce` (label_smoothing=0.0), `focal` (gamma=2.0, alpha=None). Add your own with
`hf_metric.register_classification_loss("name")`: a module with `per_row(logits, labels, mask)`."""


def build_classification_loss(name: str, **kwargs: Any) -> nn.Module:
    """`CLASSIFICATION_LOSSES[name](**kwargs)`: a module with `per_row(logits, labels, mask) -> (per_row, valid)`."""
    return CLASSIFICATION_LOSSES.build(name, **kwargs)


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


def _label_pairs(labels: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch (positive, negative) pair masks from labels and mask alone (for `num_anchors`)."""
    valid = labels >= 0 if mask is None else (labels >= 0) & mask.bool()
    allowed = valid[:, None] & valid[None, :]
    allowed.fill_diagonal_(False)
    same = labels[:, None] == labels[None, :]
    return allowed & same, allowed & ~same


class MetricLoss(nn.Module):
    """Base of metric losses: subclasses implement `per_anchor(embeddings, labels, mask, candidates=None,
    self_index=None) -> (per_row, valid)`; `pairs(...)` gives them the cosines and positive/negative pair masks.

    `num_anchors` must count the rows `per_anchor` marks valid, from labels and mask alone (the trainer uses it
    to normalise over a gradient-accumulation window before any forward pass); the default counts rows with at
    least one positive, override it when your anchors need something else.
    """

    @staticmethod
    def num_anchors(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        positive, _ = _label_pairs(labels, mask)
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

    def per_anchor(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
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

    @float32_math
    def per_anchor(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with at least one positive)."""
        pairs = _pairs(embeddings, labels, mask, candidates, self_index)
        sim = pairs.sim / self.temperature
        # Rows with no candidate at all get a finite dummy row, so that logsumexp never sees only -inf.
        has_candidate = pairs.allowed.any(dim=1, keepdim=True)
        logits = torch.where(pairs.allowed, sim, torch.full_like(sim, float("-inf")))
        logits = torch.where(has_candidate, logits, torch.zeros_like(sim))
        log_prob = sim - torch.logsumexp(logits, dim=1, keepdim=True)
        n_pos = pairs.positive.sum(dim=1)
        pos_sum = torch.where(pairs.positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        valid = n_pos > 0
        per_row = -pos_sum / n_pos.clamp(min=1)
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


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
    """

    DISTANCES = ("euclidean", "cosine")

    def __init__(self, margin: float = 0.2, distance: str = "euclidean", soft: bool = False) -> None:
        super().__init__()
        if distance not in self.DISTANCES:
            raise ValueError(f"distance must be one of {self.DISTANCES}, got {distance!r}")
        self.margin = float(margin)
        self.distance = distance
        self.soft = soft

    @staticmethod
    def num_anchors(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """In-loss rows with at least one in-loss positive and one in-loss negative."""
        positive, negative = _label_pairs(labels, mask)
        return (positive.any(dim=1) & negative.any(dim=1)).sum()

    def distances(self, sim: torch.Tensor) -> torch.Tensor:
        """Distance matrix from cosines of unit vectors; the euclidean one has a finite gradient at 0."""
        if self.distance == "cosine":
            return 1 - sim
        squared = (2 - 2 * sim).clamp(min=0)
        eps = 1e-12
        return torch.where(squared > eps, squared.clamp(min=eps).sqrt(), torch.zeros_like(squared))

    @float32_math
    def per_anchor(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with a positive and a negative)."""
        pairs = _pairs(embeddings, labels, mask, candidates, self_index)
        dist = self.distances(pairs.sim)
        has_pos, has_neg = pairs.positive.any(dim=1), pairs.negative.any(dim=1)
        # Out-of-set entries get a value that can never be chosen; rows with none are zeroed below.
        hardest_pos = torch.where(pairs.positive, dist, torch.full_like(dist, -1.0)).amax(dim=1)
        hardest_neg = torch.where(pairs.negative, dist, torch.full_like(dist, 3.0)).amin(dim=1)
        violation = hardest_pos - hardest_neg + self.margin
        per_row = F.softplus(violation) if self.soft else F.relu(violation)
        valid = has_pos & has_neg
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


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

    `candidates`/`self_index` work as in `SupConLoss`.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got {alpha}, {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)

    @staticmethod
    def num_anchors(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """In-loss rows with at least one other in-loss row (a positive or a negative)."""
        positive, negative = _label_pairs(labels, mask)
        return (positive.any(dim=1) | negative.any(dim=1)).sum()

    @staticmethod
    def _log1p_sum_exp(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """log(1 + sum_{keep} exp(x)) per row, stably; 0 for rows with nothing kept."""
        x = torch.where(keep, x, torch.full_like(x, float("-inf")))
        return torch.logsumexp(torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1), dim=1)

    @float32_math
    def per_anchor(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        candidates: Candidates | None = None,
        self_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor loss and which anchors count (in-loss rows with at least one pair)."""
        pairs = _pairs(embeddings, labels, mask, candidates, self_index)
        pos_term = self._log1p_sum_exp(-self.alpha * (pairs.sim - self.base), pairs.positive) / self.alpha
        neg_term = self._log1p_sum_exp(self.beta * (pairs.sim - self.base), pairs.negative) / self.beta
        valid = pairs.allowed.any(dim=1)
        per_row = pos_term + neg_term
        return torch.where(valid, per_row, torch.zeros_like(per_row)), valid


METRIC_LOSSES = Registry(
    "metric loss", {"supcon": SupConLoss, "triplet": TripletMarginLoss, "multi_similarity": MultiSimilarityLoss}
)
"""Name -> metric loss: `supcon` (temperature=0.1), `triplet` (margin=0.2, distance="euclidean", soft=False),
`multi_similarity` (alpha=2.0, beta=50.0, base=0.5). Add your own with `hf_metric.register_metric_loss("name")`:
a `MetricLoss` subclass that implements `per_anchor`."""


def build_metric_loss(name: str, **kwargs: Any) -> nn.Module:
    """`METRIC_LOSSES[name](**kwargs)`: a module with `per_anchor`, `num_anchors` and `forward`."""
    return METRIC_LOSSES.build(name, **kwargs)
