"""Margin heads on the cosine head: ArcFace, Sub-center ArcFace, CosFace and Circle. Each applies its margin to
the target logit only, in training only (given labels); at inference they return the plain scaled cosines.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base_heads import CosineLinear

_COS_EPS = 1e-6
"""Cosines are clamped to [-1 + eps, 1 - eps] before taking angles, so that sin(theta) = sqrt(1 - cos^2) and its
gradient stay finite at theta = 0 and pi (in float32 1 - 1e-6 is still distinct from 1)."""


class _TargetMarginHead(CosineLinear):
    """A cosine head that, given labels, replaces the target cosine with `target_logit(cos, m)` (unscaled).

    A pair-wise `negative_margin` (e.g. the same-group margin of `head.group_margin.same_group_pair`) is added to
    the chosen non-target cosines of each row: s * (cos_j + m_yj), so the target must beat those classes by the
    extra margin too (the additive form of CosFace, applied per class pair)."""

    def __init__(self, in_features: int, num_labels: int, *, margin: float, scale: float = 64.0, **kwargs: Any) -> None:
        super().__init__(in_features, num_labels, scale=scale, **kwargs)
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"

    def target_logit(self, cos: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def labelled_logits(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        margin: float | torch.Tensor | None,
        negative_margin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        valid, safe, is_target, m = self.labelled_rows(labels, self.margin if margin is None else margin, cos)
        target = self.target_logit(cos.gather(1, safe[:, None]).squeeze(1), m)
        is_target = is_target & valid[:, None]
        others = cos
        if negative_margin is not None:
            others = cos + torch.where(valid[:, None], negative_margin.to(cos.dtype), torch.zeros_like(cos))
        return self.scale * torch.where(is_target, target[:, None], others)


class ArcFaceHead(_TargetMarginHead):
    r"""Additive angular margin (ArcFace, Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition", eq. 3): the target logit is s * cos(theta_y + m), the others s * cos(theta_j).

    Adding m to the angle (a geodesic margin on the hypersphere) forces each class into a tighter cone than
    CosFace's margin on the cosine. cos(theta + m) stops decreasing past theta = pi - m, so there (as in
    insightface, with th = cos(pi - m) and mm = m sin(m)) the target logit falls back to cos(theta) - m sin(m),
    which keeps the loss monotonic in theta. With `easy_margin` the margin applies only where cos(theta) > 0
    (theta < pi/2) and the target is cos(theta) elsewhere.

    cos(theta + m) is computed as cos(theta) cos(m) - sin(theta) sin(m) on cosines clamped to
    [-1 + 1e-6, 1 - 1e-6], so the gradient stays finite at theta = 0 and pi. `margin` is in radians
    (pytorch-metric-learning's `ArcFaceLoss` takes degrees: its default 28.6 deg is 0.5 rad).
    """

    def __init__(
        self, in_features: int, num_labels: int, *, margin: float = 0.5, easy_margin: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(in_features, num_labels, margin=margin, **kwargs)
        self.easy_margin = easy_margin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, easy_margin={self.easy_margin}"

    def target_logit(self, cos: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        cos = cos.clamp(-1 + _COS_EPS, 1 - _COS_EPS)
        sin = torch.sqrt(1 - cos * cos)
        cos_m, sin_m = torch.cos(margin), torch.sin(margin)
        phi = cos * cos_m - sin * sin_m  # cos(theta + m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m) = -cos(m)
        return torch.where(cos > -cos_m, phi, cos - margin * sin_m)


class SubCenterArcFaceHead(ArcFaceHead):
    r"""Sub-center ArcFace (Deng et al. 2020, "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy
    Web Faces"): K sub-centres per class, the class cosine is the max over them, then the ArcFace margin.

    A noisy or multi-modal class need not collapse onto one centre: clean rows gather round a dominant
    sub-centre and mislabelled ones drift to the others. `dominant_subcenters` and `outliers` find them (the
    paper then drops the outliers and keeps the dominant sub-centre only).
    """

    def __init__(self, in_features: int, num_labels: int, *, sub_centers: int = 3, **kwargs: Any) -> None:
        super().__init__(in_features, num_labels, sub_centers=sub_centers, **kwargs)

    @torch.no_grad()
    def subcenter_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each row to each sub-centre, `(batch, num_labels, K)`."""
        cos = self.all_cosines(embeddings)
        return cos.view(cos.shape[0], self.num_labels, self.sub_centers)

    @torch.no_grad()
    def dominant_subcenters(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per class, the sub-centre nearest to most of its rows (ties: the lowest index); -1 if no row has it.

        Returns a long tensor `(num_labels,)`. Rows labelled -100 are ignored.
        """
        own = self._own_subcenter_cosines(embeddings, labels)
        dominant = torch.full((self.num_labels,), -1, dtype=torch.long, device=embeddings.device)
        valid = labels >= 0
        nearest = own.argmax(dim=1)
        counts = torch.zeros(self.num_labels, self.sub_centers, dtype=torch.long, device=embeddings.device)
        counts.index_put_((labels[valid], nearest[valid]), torch.ones_like(nearest[valid]), accumulate=True)
        present = counts.sum(dim=1) > 0
        dominant[present] = counts[present].argmax(dim=1)
        return dominant

    @torch.no_grad()
    def outliers(
        self, embeddings: torch.Tensor, labels: torch.Tensor, threshold: float | None = 75.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows that are far from their class's dominant sub-centre, and the dominant sub-centres themselves.

        As pytorch-metric-learning's `SubCenterArcFaceLoss.get_outliers`: a row is an outlier if the angle
        between it and the dominant sub-centre of its label exceeds `threshold` degrees (default 75, i.e. its
        cosine is below cos(75 deg)). With `threshold=None` a row is an outlier if its nearest sub-centre is not
        the dominant one. The dominant sub-centre of a class is the one nearest to most of the class's rows in
        this batch, so pass a large batch (or the whole data set, in chunks of embeddings).

        Returns:
            indices: sorted long tensor of outlier rows (rows labelled -100 are never outliers).
            dominant_centers: `(num_labels, in_features)` dominant sub-centre weights (not normalised; zeros for
                classes absent from `labels`). pml returns the transpose, with uninitialised columns there.
        """
        own = self._own_subcenter_cosines(embeddings, labels)
        dominant = self.dominant_subcenters(embeddings, labels)
        valid = labels >= 0
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        row_dominant = dominant[safe]
        if threshold is None:
            is_outlier = own.argmax(dim=1) != row_dominant
        else:
            cos_dominant = own.gather(1, row_dominant.clamp(min=0)[:, None]).squeeze(1)
            is_outlier = cos_dominant < math.cos(math.radians(threshold))
        indices = torch.nonzero(is_outlier & valid).flatten()
        centers = self.weight.view(self.num_labels, self.sub_centers, self.in_features)
        present = dominant >= 0
        dominant_centers = centers.new_zeros(self.num_labels, self.in_features)
        dominant_centers[present] = centers[present, dominant[present]]
        return indices, dominant_centers

    def _own_subcenter_cosines(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`(batch, K)`: cosine of each row to the sub-centres of its own label (of class 0 for ignored rows)."""
        cos = self.subcenter_cosines(embeddings)
        safe = torch.where(labels >= 0, labels, torch.zeros_like(labels))
        return cos[torch.arange(len(labels), device=cos.device), safe]


class CosFaceHead(_TargetMarginHead):
    r"""Additive cosine margin (CosFace / LMCL, Wang et al. 2018, "CosFace: Large Margin Cosine Loss for Deep Face
    Recognition", eq. 4): the target logit is s * (cos(theta_y) - m), the others s * cos(theta_j).

    The margin is on the cosine, so it is the same everywhere on the sphere and needs no special case.
    """

    def __init__(self, in_features: int, num_labels: int, *, margin: float = 0.35, **kwargs: Any) -> None:
        super().__init__(in_features, num_labels, margin=margin, **kwargs)

    def target_logit(self, cos: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        return cos - margin


class CircleHead(CosineLinear):
    r"""Circle loss in its classification form (Sun et al. 2020, "Circle Loss: A Unified Perspective of Pair
    Similarity Optimization", eq. 4 with class-weight proxies): cross-entropy on these logits is the circle loss.

    With s_p the cosine to the target class and s_n those to the others:

    .. math::
        \text{logit}_y = \gamma\, \alpha_p (s_p - \Delta_p), \quad
        \text{logit}_j = \gamma\, \alpha_n^j (s_n^j - \Delta_n), \quad
        \alpha_p = [1 + m - s_p]_+, \ \alpha_n^j = [s_n^j + m]_+, \ \Delta_p = 1 - m, \ \Delta_n = m

    and log(1 + sum_j exp(logit_j - logit_y)) is the loss of eq. 4. The weights alpha re-weight each similarity by
    how far it is from its optimum (1 + m for s_p, -m for s_n); as in the paper they are constants for the
    gradient (detached). Given labels every logit of a labelled row is transformed (that is the loss); rows
    labelled -100 keep the inference logits.

    Inference logits (no labels) are gamma * cos(theta_j): the training logits are a monotone transform of the
    cosine only per role (target vs non-target), which is unknown at inference, and argmax of the cosine is the
    decision rule of the paper. Their softmax is not calibrated like the training one; use a `temperature`
    fitted on validation data if probabilities matter.

    `m` defaults to 0.25 and `gamma` to 256, the paper's face-recognition (classification) setting;
    pytorch-metric-learning's pair-based `CircleLoss` defaults to m = 0.4, gamma = 80. A per-row `margin` given
    to `forward` overrides `m` for that row. Note that m is a *relaxation* factor, not a margin in the ArcFace
    sense: the decision boundary is the circle s_n^2 + (s_p - 1)^2 = 2 m^2, so a larger m is a looser
    constraint (d logit_y / dm = 2 gamma m > 0: a larger m gives a larger target logit), and m -> 0 is the
    strictest (s_p = 1, s_n = 0).
    """

    def __init__(
        self, in_features: int, num_labels: int, *, m: float = 0.25, gamma: float = 256.0, **kwargs: Any
    ) -> None:
        super().__init__(in_features, num_labels, scale=gamma, **kwargs)
        self.m = float(m)

    @property
    def gamma(self) -> float:
        return self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"

    def labelled_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, margin: float | torch.Tensor | None
    ) -> torch.Tensor:
        valid, _, is_target, m = self.labelled_rows(labels, self.m if margin is None else margin, cos)
        m, s = m[:, None], cos.detach()
        positive = self.scale * torch.relu(1 + m - s) * (cos - (1 - m))
        negative = self.scale * torch.relu(s + m) * (cos - m)
        circle = torch.where(is_target, positive, negative)
        return torch.where(valid[:, None], circle, self.scale * cos)
