"""The base of the classification heads and the two plain ones: `Head` (temperature), `LinearHead` and the
cosine head `CosineLinear` (with sub-centres), whose weight matrix the margin heads share.

Every head computes its logits in float32 even under fp16/bf16 autocast (`precision.py`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .precision import compute_dtype as _compute_dtype
from .precision import no_autocast as _no_autocast


def _row_margin(margin: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The margin as a `(batch,)` tensor in the dtype/device of `like`, from a float or a per-row tensor."""
    m = torch.as_tensor(margin, dtype=like.dtype, device=like.device)
    if m.dim() == 0:
        return m.expand(batch)
    if m.shape != (batch,):
        raise ValueError(f"per-sample margin must have shape ({batch},), got {tuple(m.shape)}")
    return m


class Head(nn.Module):
    """Base of the heads here: a subclass implements `compute_logits(embeddings, labels=None, margin=None)`
    (logits before the temperature); `forward` calls it and divides by `temperature`.

    A temperature T turns the softmax into softmax(logits / T): T > 1 softens it, T < 1 sharpens it. It is a
    plain hyper-parameter (not learned), applied after any margin and scale.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        margin: float | torch.Tensor | None = None,
        negative_margin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits `(batch, num_labels)`; `labels` (training only) and `margin` (per-row override) are optional;
        `negative_margin` `(batch, num_labels)` (target-margin heads only) is added to the non-target cosines."""
        if negative_margin is None:
            logits = self.compute_logits(embeddings, labels, margin)
        else:
            logits = self.compute_logits(embeddings, labels, margin, negative_margin=negative_margin)
        return logits if self.temperature == 1.0 else logits / self.temperature


class LinearHead(Head):
    """The usual affine classifier on the raw pooled output, in float32 under autocast (a few hundred
    multiply-adds per row; the logits feed a softmax). `labels` and `margin` are ignored."""

    def __init__(self, in_features: int, num_labels: int, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.linear = nn.Linear(in_features, num_labels)

    def compute_logits(self, embeddings: torch.Tensor, *ignored: Any) -> torch.Tensor:
        """`W x + b`; the labels and margin that `forward` passes are ignored."""
        dtype = _compute_dtype(embeddings)
        bias = self.linear.bias
        with _no_autocast(embeddings.device):
            return F.linear(
                embeddings.to(dtype), self.linear.weight.to(dtype), None if bias is None else bias.to(dtype)
            )


class CosineLinear(Head):
    r"""Cosine classifier (NormFace, Wang et al. 2017): logits = s * cos(theta_j), no bias.

    .. math:: \text{logit}_j = s \cdot \frac{x \cdot W_j}{\lVert x \rVert \lVert W_j \rVert}

    Normalising both sides makes the logits depend on angles only; the fixed scale `s` keeps the softmax from
    being stuck near uniform (cosines lie in [-1, 1]). With `sub_centers = K > 1` each class has K weight rows
    and its cosine is the max over them (Sub-center ArcFace, Deng et al. 2020). This is also the base of the
    margin heads, whose inference logits are exactly these scaled cosines. `labels`/`margin` are ignored here.
    """

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        scale: float = 30.0,
        sub_centers: int = 1,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(temperature)
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        self.in_features = in_features
        self.num_labels = num_labels
        self.scale = float(scale)
        self.sub_centers = int(sub_centers)
        # Row c * K + k is sub-centre k of class c (the layout of pytorch-metric-learning's W columns).
        self.weight = nn.Parameter(torch.empty(num_labels * self.sub_centers, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform class weights: only their direction matters, but the norm sets Adam's angular step."""
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_labels={self.num_labels}, scale={self.scale}, "
            f"sub_centers={self.sub_centers}, temperature={self.temperature}"
        )

    def all_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each row to every weight row, `(batch, num_labels * K)`, in float32 or better."""
        dtype = _compute_dtype(embeddings)
        with _no_autocast(embeddings.device):
            x = F.normalize(embeddings.to(dtype), dim=-1)
            w = F.normalize(self.weight.to(dtype), dim=-1)
            return x @ w.T

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each row to each class, `(batch, num_labels)`: the max over the class's sub-centres."""
        cos = self.all_cosines(embeddings)
        if self.sub_centers == 1:
            return cos
        return cos.view(cos.shape[0], self.num_labels, self.sub_centers).amax(dim=2)

    def compute_logits(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        margin: float | torch.Tensor | None = None,
        **extra: Any,
    ) -> torch.Tensor:
        """The scaled cosines; given labels (training), `labelled_logits` turns them into the training logits,
        in float32 outside autocast. `extra`: a margin head's own training inputs (`negative_margin`)."""
        cos = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos
        with _no_autocast(cos.device):
            return self.labelled_logits(cos, labels, margin, **extra)

    def labelled_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, margin: float | torch.Tensor | None
    ) -> torch.Tensor:
        """Training logits from the class cosines `cos`; the margin heads override this (here: the cosines)."""
        return self.scale * cos

    def labelled_rows(
        self, labels: torch.Tensor, margin: float | torch.Tensor, cos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the margin heads: rows with a real label, labels safe to index with, the one-hot target mask and
        each row's margin (as a `(batch,)` tensor in the dtype of `cos`)."""
        valid = labels >= 0
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        m = _row_margin(margin, cos.shape[0], cos)
        return valid, safe, F.one_hot(safe, self.num_labels).bool(), m
