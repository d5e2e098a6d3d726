"""Heads against naive float64 implementations of the papers' formulas and against pytorch-metric-learning.

pml's ArcFace/CosFace/SubCenter losses own a weight matrix W of shape (embedding_size, num_classes * K) and
return the mean cross-entropy over their margin logits; we copy our head's weights into W (transposed) and
compare with F.cross_entropy(head(x, y), y). pml's ArcFaceLoss takes its margin in degrees. pml's CircleLoss is
pair-based; given the class weights as `ref_emb` (one reference per class) its formula is exactly the
classification form, so that is how the circle head is compared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_metric.model import heads as heads_module
from hf_metric.model.heads import (
    HEADS,
    ArcFaceHead,
    CircleHead,
    CosFaceHead,
    CosineLinear,
    Head,
    LinearHead,
    SubCenterArcFaceHead,
    TemperatureScaled,
    build_head,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

D, C = 8, 5
MARGIN_HEADS = ["arcface", "subcenter_arcface", "cosface", "circle"]
COSINE_HEADS = ["cosine", *MARGIN_HEADS]


def _data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def _head(head_type: str, **kwargs) -> nn.Module:
    torch.manual_seed(1)
    return build_head(head_type, D, C, **kwargs).double()


def ref_cosines(x: torch.Tensor, weight: torch.Tensor, sub_centers: int = 1) -> np.ndarray:
    """(n, C) class cosines in float64 numpy: max over each class's sub-centres."""
    xn = x.detach().double().numpy()
    w = weight.detach().double().numpy()
    xn = xn / np.linalg.norm(xn, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = xn @ w.T
    return cos.reshape(len(xn), -1, sub_centers).max(axis=2)


def ref_arcface_target(c: float, m: float, easy_margin: bool = False) -> float:
    """Deng et al. 2019 eq. 3 with insightface's fallback cos(theta) - m sin(m) when theta + m > pi."""
    theta = math.acos(c)
    if easy_margin:
        return math.cos(theta + m) if c > 0 else c
    return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)


def ref_margin_logits(head_type: str, cos: np.ndarray, labels, m, scale: float, easy_margin: bool = False):
    """Training logits of the margin heads from class cosines, row by row (m: scalar or per-row)."""
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        mi = float(m[i]) if np.ndim(m) else float(m)
        if head_type in ("arcface", "subcenter_arcface"):
            out[i, y] = ref_arcface_target(cos[i, y], mi, easy_margin)
        elif head_type == "cosface":
            out[i, y] = cos[i, y] - mi
        else:
            raise ValueError(head_type)
    return scale * out


def ref_circle_logits(cos: np.ndarray, labels, m, gamma: float) -> np.ndarray:
    """Sun et al. 2020: gamma*alpha_p*(s_p - (1 - m)) on the target, gamma*alpha_n*(s_n - m) elsewhere."""
    out = gamma * cos.copy()
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        mi = float(m[i]) if np.ndim(m) else float(m)
        for j in range(cos.shape[1]):
            s = cos[i, j]
            if j == y:
                out[i, j] = gamma * max(1 + mi - s, 0.0) * (s - (1 - mi))
            else:
                out[i, j] = gamma * max(s + mi, 0.0) * (s - mi)
    return out


def ref_circle_loss(cos: np.ndarray, labels, m: float, gamma: float) -> float:
    """Circle loss, eq. 4 with one positive (the class) and C - 1 negatives per row, averaged over rows."""
    losses = []
    for i, y in enumerate(labels.tolist()):
        sp = cos[i, y]
        pos = math.exp(-gamma * max(1 + m - sp, 0.0) * (sp - (1 - m)))
        neg = sum(math.exp(gamma * max(cos[i, j] + m, 0.0) * (cos[i, j] - m)) for j in range(cos.shape[1]) if j != y)
        losses.append(math.log(1 + neg * pos))
    return float(np.mean(losses))


def _sub_centers(head: nn.Module) -> int:
    return getattr(head, "sub_centers", 1)


def _near_antipodal(head: nn.Module, labels: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """Rows close to minus their class weight: theta_y > pi - 0.5, so ArcFace's fallback branch is used."""
    g = torch.Generator().manual_seed(seed)
    w = F.normalize(head.weight.detach().double(), dim=-1)[labels * _sub_centers(head)]
    return -w + 0.12 * torch.randn(w.shape, generator=g, dtype=torch.float64)


# --- registry and construction ----------------------------------------------------------------------------


def test_registry_names():
    assert set(HEADS) == {"linear", "cosine", "arcface", "subcenter_arcface", "cosface", "circle"}
    with pytest.raises(ValueError, match="unknown head type"):
        build_head("nope", D, C)


@pytest.mark.parametrize("head_type", COSINE_HEADS)
def test_weights_are_raw_parameters(head_type):
    """Not an nn.Linear, so the model's `_init_weights` (normal(0.02) on nn.Linear) does not touch them."""
    head = build_head(head_type, D, C)
    assert not any(isinstance(m, nn.Linear) for m in head.modules())
    k = 3 if head_type == "subcenter_arcface" else 1
    assert isinstance(head.weight, nn.Parameter) and head.weight.shape == (C * k, D)
    before = head.weight.detach().clone()
    head.reset_parameters()
    assert not torch.equal(before, head.weight)


def test_linear_head_unchanged():
    torch.manual_seed(0)
    head = build_head("linear", D, C)
    x, y = _data()
    x = x.float()
    expected = head.linear(x)
    assert torch.equal(head(x), expected) and torch.equal(head(x, y), expected)
    assert torch.equal(head(x, y, margin=0.3), expected)
    assert list(head.state_dict()) == ["linear.weight", "linear.bias"]


# --- inference logits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_type", COSINE_HEADS)
def test_inference_logits_are_scaled_cosines(head_type):
    head = _head(head_type)
    x, _ = _data()
    expected = head.scale * ref_cosines(x, head.weight, _sub_centers(head))
    np.testing.assert_allclose(head(x).detach().numpy(), expected, atol=1e-10)


def test_cosine_head_ignores_labels_and_margin():
    head = _head("cosine", scale=10.0)
    x, y = _data()
    assert torch.equal(head(x), head(x, y, margin=0.4))


# --- training logits against the paper formulas -------------------------------------------------------------


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("head_type", ["arcface", "subcenter_arcface", "cosface"])
def test_margin_logits_match_formula(head_type, easy_margin):
    kwargs = {"easy_margin": easy_margin} if head_type != "cosface" else {}
    head = _head(head_type, scale=30.0, margin=0.5, **kwargs)
    x, y = _data(40)
    x[:12] = _near_antipodal(head, y[:12])
    cos = ref_cosines(x, head.weight, _sub_centers(head))
    if head_type == "arcface":  # the fallback branch is exercised
        assert (cos[np.arange(12), y[:12].numpy()] < -math.cos(0.5)).sum() >= 6
    expected = ref_margin_logits(head_type, cos, y, 0.5, 30.0, easy_margin)
    np.testing.assert_allclose(head(x, y).detach().numpy(), expected, atol=1e-8)


def test_circle_logits_and_loss_match_formula():
    head = _head("circle", m=0.25, gamma=32.0)
    x, y = _data(40)
    cos = ref_cosines(x, head.weight)
    logits = head(x, y)
    np.testing.assert_allclose(logits.detach().numpy(), ref_circle_logits(cos, y, 0.25, 32.0), atol=1e-8)
    assert F.cross_entropy(logits, y).item() == pytest.approx(ref_circle_loss(cos, y, 0.25, 32.0), abs=1e-8)


# --- against pytorch-metric-learning ------------------------------------------------------------------------


def _copy_to_pml(head: nn.Module, loss_fn: nn.Module) -> None:
    with torch.no_grad():
        loss_fn.W.data = head.weight.detach().T.clone().double()


@pytest.mark.parametrize("margin,scale", [(0.5, 64.0), (0.3, 16.0)])
def test_arcface_matches_pml(margin, scale):
    head = _head("arcface", scale=scale, margin=margin)
    x, y = _data(48)
    x[:16] = _near_antipodal(head, y[:16])
    loss_fn = pml_losses.ArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(margin), scale=scale)
    _copy_to_pml(head, loss_fn)
    ours = F.cross_entropy(head(x, y), y)
    assert ours.item() == pytest.approx(loss_fn(x, y).item(), abs=1e-5)


def test_subcenter_arcface_matches_pml():
    head = _head("subcenter_arcface", scale=64.0, margin=0.5, sub_centers=3)
    x, y = _data(48)
    loss_fn = pml_losses.SubCenterArcFaceLoss(
        num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64.0, sub_centers=3
    )
    _copy_to_pml(head, loss_fn)
    ours = F.cross_entropy(head(x, y), y)
    assert ours.item() == pytest.approx(loss_fn(x, y).item(), abs=1e-5)


def test_cosface_matches_pml():
    head = _head("cosface", scale=64.0, margin=0.35)
    x, y = _data(48)
    loss_fn = pml_losses.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=64.0)
    _copy_to_pml(head, loss_fn)
    ours = F.cross_entropy(head(x, y), y)
    assert ours.item() == pytest.approx(loss_fn(x, y).item(), abs=1e-5)


@pytest.mark.parametrize("m,gamma", [(0.4, 80.0), (0.25, 256.0)])
def test_circle_matches_pml_with_class_weights_as_references(m, gamma):
    """pml's pair-based CircleLoss with the class weights as the only references (one per class, labels 0..C-1)
    is the classification form: same loss and, alphas being detached in both, the same gradient."""
    head = _head("circle", m=m, gamma=gamma)
    x, y = _data(32)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = F.cross_entropy(head(x1, y), y)
    ref = pml_losses.CircleLoss(m=m, gamma=gamma)(
        x2, y, ref_emb=head.weight.detach().clone(), ref_labels=torch.arange(C)
    )
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


# --- sub-centre outliers ------------------------------------------------------------------------------------


def test_subcenter_outliers_match_pml():
    head = _head("subcenter_arcface", sub_centers=3)
    x, y = _data(200, seed=5)
    assert len(set(y.tolist())) == C  # pml leaves absent classes' dominant centres uninitialised
    loss_fn = pml_losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, sub_centers=3)
    _copy_to_pml(head, loss_fn)
    for threshold in (60.0, 75.0, 90.0):
        ours, centers = head.outliers(x, y, threshold=threshold)
        ref, ref_centers = loss_fn.get_outliers(x, y, threshold=threshold)
        assert len(ours) > 0
        assert ours.tolist() == sorted(ref.tolist())
        torch.testing.assert_close(centers, ref_centers.T)


def test_subcenter_dominant_and_nearest_outliers():
    head = _head("subcenter_arcface", sub_centers=3)
    x, y = _data(120, seed=6)
    y[:7] = -100
    sub = ref_cosines(x, head.weight, 1).reshape(len(x), C, 3)
    dominant = head.dominant_subcenters(x, y)
    for c in range(C):
        rows = (y == c).numpy()
        nearest = sub[rows, c].argmax(axis=1)
        assert dominant[c].item() == np.bincount(nearest, minlength=3).argmax()
    expected = [i for i in range(len(y)) if y[i] >= 0 and sub[i, y[i]].argmax() != dominant[y[i]].item()]
    outliers, _ = head.outliers(x, y, threshold=None)
    assert outliers.tolist() == expected
    assert not set(outliers.tolist()) & set(range(7))
    y_missing = torch.where(y == 4, torch.full_like(y, 3), y)
    assert head.dominant_subcenters(x, y_missing)[4].item() == -1
    _, centers = head.outliers(x, y_missing)
    assert torch.count_nonzero(centers[4]) == 0


# --- per-sample margins, ignored rows, temperature ----------------------------------------------------------


@pytest.mark.parametrize("head_type", MARGIN_HEADS)
def test_per_sample_margin(head_type):
    head = _head(head_type)
    x, y = _data(12)
    x = torch.cat([x, x])  # the same rows twice, with a small then a large margin
    y = torch.cat([y, y])
    m = torch.cat([torch.full((12,), 0.1), torch.full((12,), 0.45)]).double()
    logits = head(x, y, margin=m)
    cos = ref_cosines(x, head.weight, _sub_centers(head))
    if head_type == "circle":
        expected = ref_circle_logits(cos, y, m.numpy(), head.scale)
    else:
        expected = ref_margin_logits(head_type, cos, y, m.numpy(), head.scale)
    np.testing.assert_allclose(logits.detach().numpy(), expected, atol=1e-8)
    target = logits.gather(1, y[:, None]).squeeze(1)
    if head_type == "circle":  # m is a relaxation there: d logit_y / dm = 2 gamma m > 0
        assert (target[12:] > target[:12]).all()
    else:
        assert (target[12:] < target[:12]).all()
    for i in (0, 5, 17):  # a per-row tensor is the same as that row alone with a float margin
        single = head(x[i : i + 1], y[i : i + 1], margin=float(m[i]))
        torch.testing.assert_close(logits[i : i + 1], single)
    torch.testing.assert_close(head(x, y, margin=0.45), head(x, y, margin=torch.full((24,), 0.45, dtype=torch.float64)))


@pytest.mark.parametrize("head_type", MARGIN_HEADS)
def test_per_sample_margin_shape_is_checked(head_type):
    head = _head(head_type)
    x, y = _data(6)
    with pytest.raises(ValueError, match="per-sample margin"):
        head(x, y, margin=torch.ones(5))


@pytest.mark.parametrize("head_type", MARGIN_HEADS)
def test_ignored_rows_get_plain_logits(head_type):
    head = _head(head_type)
    x, y = _data(10)
    y[[1, 4]] = -100
    logits = head(x, y, margin=torch.full((10,), 0.3).double())
    plain = head(x)
    torch.testing.assert_close(logits[[1, 4]], plain[[1, 4]])
    assert not torch.allclose(logits[0], plain[0])
    all_ignored = torch.full_like(y, -100)
    torch.testing.assert_close(head(x, all_ignored), plain)


@pytest.mark.parametrize("head_type", ["linear", *COSINE_HEADS])
def test_temperature_divides_logits(head_type):
    torch.manual_seed(0)
    plain = build_head(head_type, D, C)
    torch.manual_seed(0)
    warm = build_head(head_type, D, C, temperature=2.5)
    assert isinstance(warm, Head) and warm.temperature == 2.5
    assert list(warm.state_dict()) == list(plain.state_dict())
    x, y = _data()
    x = x.float()
    torch.testing.assert_close(warm(x), plain(x) / 2.5)
    torch.testing.assert_close(warm(x, y), plain(x, y) / 2.5)
    with pytest.raises(ValueError, match="temperature"):
        build_head(head_type, D, C, temperature=0.0)


def test_temperature_wraps_foreign_heads(monkeypatch):
    class Foreign(nn.Module):
        def __init__(self, in_features: int, num_labels: int) -> None:
            super().__init__()
            self.linear = nn.Linear(in_features, num_labels)

        def forward(self, embeddings, labels=None, margin=None):
            return self.linear(embeddings)

    monkeypatch.setitem(heads_module.HEADS, "foreign", Foreign)
    assert isinstance(build_head("foreign", D, C), Foreign)
    assert isinstance(build_head("foreign", D, C, temperature=1.0), Foreign)
    wrapped = build_head("foreign", D, C, temperature=4.0)
    assert isinstance(wrapped, TemperatureScaled)
    x = torch.randn(3, D)
    torch.testing.assert_close(wrapped(x), wrapped.head(x) / 4.0)


# --- numerics -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_type", ["arcface", "subcenter_arcface"])
def test_arcface_gradients_finite_at_zero_and_pi(head_type):
    head = build_head(head_type, D, C)
    y = torch.tensor([0, 1, 2, 3])
    w = head.weight.detach()[y * _sub_centers(head)]
    x = torch.cat([w[:2], -w[2:]]).clone().requires_grad_(True)  # theta = 0 and theta = pi exactly
    loss = F.cross_entropy(head(x, y), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_easy_margin_no_margin_for_obtuse_angles():
    head = _head("arcface", easy_margin=True, scale=1.0, margin=0.5)
    x, y = _data(40)
    cos = ref_cosines(x, head.weight)
    target = head(x, y).gather(1, y[:, None]).squeeze(1).detach().numpy()
    obtuse = cos[np.arange(40), y.numpy()] <= 0
    assert obtuse.any() and (~obtuse).any()
    np.testing.assert_allclose(target[obtuse], cos[np.arange(40), y.numpy()][obtuse], atol=1e-12)


@pytest.mark.parametrize("head_type", COSINE_HEADS)
def test_autocast_logits_are_float32(head_type):
    torch.manual_seed(0)
    head = build_head(head_type, D, C)
    x, y = _data()
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x.bfloat16(), y)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(x.bfloat16().float(), y))


@pytest.mark.parametrize("head_type", MARGIN_HEADS)
def test_bf16_autocast_adam_training_stays_finite(head_type):
    """200 Adam steps with scale 64 under bf16 autocast: no NaN in loss, logits or weights."""
    torch.manual_seed(0)
    kwargs = {"gamma": 64.0} if head_type == "circle" else {"scale": 64.0}
    encoder = nn.Linear(12, 6)
    head = build_head(head_type, 6, 4, **kwargs)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    x = torch.randn(32, 12)
    y = torch.randint(0, 4, (32,))
    y[0] = -100
    for _ in range(200):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = head(encoder(x), y, margin=torch.rand(32) * 0.5)
            loss = F.cross_entropy(logits, y, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(head(encoder(x))).all()


def test_head_classes_exported():
    assert HEADS["cosine"] is CosineLinear and HEADS["arcface"] is ArcFaceHead
    assert HEADS["subcenter_arcface"] is SubCenterArcFaceHead and HEADS["cosface"] is CosFaceHead
    assert HEADS["circle"] is CircleHead and HEADS["linear"] is LinearHead
    assert isinstance(build_head("circle", D, C), CircleHead) and build_head("circle", D, C, gamma=8.0).gamma == 8.0
