"""Classification and metric losses against naive float64 formulas and pytorch-metric-learning.

pml conventions that differ from ours, handled here: its TripletMarginLoss and SupConLoss average only the
non-zero per-anchor losses (AvgNonZeroReducer), its MultiSimilarityLoss averages over every row; our losses
return `(per_row, valid)` and `masked_mean` averages over the valid anchors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_metric.model.losses import (
    CLASSIFICATION_LOSSES,
    METRIC_LOSSES,
    CrossEntropyLoss,
    FocalLoss,
    MultiSimilarityLoss,
    SupConLoss,
    TripletMarginLoss,
    build_classification_loss,
    build_metric_loss,
    masked_cross_entropy,
    masked_mean,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

C = 5


def _logits(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, C, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def _embeddings(n: int = 24, dim: int = 6, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _unit(x: torch.Tensor) -> np.ndarray:
    z = x.detach().double().numpy()
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _log_softmax(row: np.ndarray) -> np.ndarray:
    return row - (row.max() + math.log(np.exp(row - row.max()).sum()))


# --- classification losses ----------------------------------------------------------------------------------


def test_classification_registry():
    assert set(CLASSIFICATION_LOSSES) == {"ce", "focal"}
    assert isinstance(build_classification_loss("ce", label_smoothing=0.1), CrossEntropyLoss)
    assert isinstance(build_classification_loss("focal", gamma=1.0), FocalLoss)
    with pytest.raises(ValueError, match="unknown classification loss"):
        build_classification_loss("hinge")


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_label_smoothing_matches_formula(smoothing):
    logits, labels = _logits()
    labels[3] = -100
    mask = torch.ones_like(labels)
    mask[[0, 7]] = 0
    per_row, valid = build_classification_loss("ce", label_smoothing=smoothing).per_row(logits, labels, mask)
    for i in range(len(labels)):
        if i in (0, 3, 7):
            assert not valid[i] and per_row[i] == 0
            continue
        logp = _log_softmax(logits[i].numpy())
        expected = -(1 - smoothing) * logp[labels[i]] - smoothing * logp.mean()
        assert per_row[i].item() == pytest.approx(expected, abs=1e-5)
    keep = valid.clone()
    expected_mean = F.cross_entropy(logits[keep].float(), labels[keep], label_smoothing=smoothing)
    ce = CrossEntropyLoss(smoothing)
    assert ce(logits, labels, mask).item() == pytest.approx(expected_mean.item(), abs=1e-6)


def test_masked_cross_entropy_default_unchanged():
    logits, labels = _logits()
    per_row, valid = masked_cross_entropy(logits, labels)
    torch.testing.assert_close(per_row, F.cross_entropy(logits, labels, reduction="none"))  # float64 stays float64
    assert valid.all()


def _ref_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha) -> list[float]:
    out = []
    for i, y in enumerate(labels.tolist()):
        logp = _log_softmax(logits[i].numpy())[y]
        a = 1.0 if alpha is None else (alpha if np.ndim(alpha) == 0 else alpha[y])
        out.append(-a * (1 - math.exp(logp)) ** gamma * logp)
    return out


@pytest.mark.parametrize(
    "gamma,alpha", [(2.0, None), (0.5, None), (1.0, 0.25), (2.0, [0.1, 0.2, 0.3, 0.4, 1.0]), (0.0, None)]
)
def test_focal_matches_formula(gamma, alpha):
    logits, labels = _logits(30)
    loss = build_classification_loss("focal", gamma=gamma, alpha=alpha)
    per_row, valid = loss.per_row(logits, labels)
    assert valid.all()
    np.testing.assert_allclose(per_row.numpy(), _ref_focal(logits, labels, gamma, alpha), atol=1e-5)
    if gamma == 0 and alpha is None:
        torch.testing.assert_close(per_row, masked_cross_entropy(logits, labels)[0])


def test_focal_alpha_tensor_and_mask():
    logits, labels = _logits(12)
    labels[2] = -100
    mask = torch.ones_like(labels)
    mask[5] = 0
    alpha = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    per_row, valid = FocalLoss(gamma=2.0, alpha=alpha).per_row(logits, labels, mask)
    assert valid.tolist() == [i not in (2, 5) for i in range(12)]
    assert per_row[2] == 0 and per_row[5] == 0
    ref = _ref_focal(logits, torch.where(labels >= 0, labels, 0), 2.0, alpha.numpy())
    np.testing.assert_allclose(per_row[valid].numpy(), np.array(ref)[valid.numpy()], atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=torch.ones(2, 2))


@pytest.mark.parametrize("name,kwargs", [("ce", {"label_smoothing": 0.1}), ("focal", {"gamma": 0.5, "alpha": 0.5})])
def test_classification_no_valid_row_gives_zero(name, kwargs):
    logits, labels = _logits(6)
    logits = logits.float().requires_grad_(True)
    loss_fn = build_classification_loss(name, **kwargs)
    for lab, mask in ((labels, torch.zeros_like(labels)), (torch.full_like(labels, -100), None)):
        loss = loss_fn(logits, lab, mask)
        assert loss.item() == 0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_focal_gradient_finite_when_confident():
    """p_t = 1 in float32: (1 - p_t)^gamma with gamma < 1 must not give inf * 0 = NaN."""
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = FocalLoss(gamma=0.5)(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


# --- metric losses: registry and naive references -----------------------------------------------------------


def test_metric_registry():
    assert set(METRIC_LOSSES) == {"supcon", "triplet", "multi_similarity"}
    assert isinstance(build_metric_loss("supcon", temperature=0.2), SupConLoss)
    assert isinstance(build_metric_loss("triplet", margin=0.1, distance="cosine"), TripletMarginLoss)
    assert isinstance(build_metric_loss("multi_similarity", alpha=1.0), MultiSimilarityLoss)
    with pytest.raises(ValueError, match="unknown metric loss"):
        build_metric_loss("npair")
    with pytest.raises(ValueError, match="distance"):
        TripletMarginLoss(distance="manhattan")


def _ref_triplet(x, labels, margin, distance="euclidean", soft=False):
    """Hermans et al. 2017, batch hard, with explicit loops; None for anchors without a positive or negative."""
    z = _unit(x)
    labels = labels.tolist()
    out = []
    for a in range(len(z)):
        pos, neg = [], []
        for b in range(len(z)):
            if b == a:
                continue
            d = np.linalg.norm(z[a] - z[b]) if distance == "euclidean" else 1 - float(z[a] @ z[b])
            (pos if labels[b] == labels[a] else neg).append(d)
        if not pos or not neg:
            out.append(None)
            continue
        v = max(pos) - min(neg) + margin
        out.append(math.log1p(math.exp(v)) if soft else max(v, 0.0))
    return out


def _ref_multi_similarity(x, labels, alpha, beta, base):
    """Wang et al. 2019, eq. 8, all pairs, with explicit loops."""
    z = _unit(x)
    labels = labels.tolist()
    out = []
    for i in range(len(z)):
        pos = [float(z[i] @ z[k]) for k in range(len(z)) if k != i and labels[k] == labels[i]]
        neg = [float(z[i] @ z[k]) for k in range(len(z)) if labels[k] != labels[i]]
        p = math.log(1 + sum(math.exp(-alpha * (s - base)) for s in pos)) / alpha
        n = math.log(1 + sum(math.exp(beta * (s - base)) for s in neg)) / beta
        out.append(p + n)
    return out


def _ref_supcon(x, labels, temperature):
    z = _unit(x)
    labels = labels.tolist()
    out = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            out.append(None)
            continue
        log_den = math.log(sum(math.exp(float(z[i] @ z[a]) / temperature) for a in others))
        out.append(-np.mean([float(z[i] @ z[p]) / temperature - log_den for p in pos]))
    return out


def _check_against(per_row, valid, ref):
    assert valid.tolist() == [r is not None for r in ref]
    for got, want in zip(per_row.tolist(), ref, strict=True):
        assert got == pytest.approx(0.0 if want is None else want, abs=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_matches_formula(distance, soft):
    x, labels = _embeddings(20, classes=6)
    loss = TripletMarginLoss(margin=0.3, distance=distance, soft=soft)
    per_row, valid = loss.per_anchor(x, labels)
    ref = _ref_triplet(x, labels, 0.3, distance, soft)
    _check_against(per_row, valid, ref)
    assert not valid.all()  # some labels appear once: those anchors have no positive
    assert loss.num_anchors(labels).item() == valid.sum().item()


def test_multi_similarity_matches_formula():
    x, labels = _embeddings(20)
    loss = MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.6)
    per_row, valid = loss.per_anchor(x, labels)
    _check_against(per_row, valid, _ref_multi_similarity(x, labels, 2.0, 40.0, 0.6))
    assert loss.num_anchors(labels).item() == valid.sum().item() == 20


def test_supcon_matches_formula():
    x, labels = _embeddings(20, classes=8)
    per_row, valid = SupConLoss(0.1).per_anchor(x, labels)
    _check_against(per_row, valid, _ref_supcon(x, labels, 0.1))


# --- metric losses against pytorch-metric-learning ----------------------------------------------------------


@pytest.mark.parametrize("margin", [0.05, 0.2, 0.5])
def test_triplet_batch_hard_matches_pml(margin):
    x, labels = _embeddings(32, classes=5, seed=1)
    ours_rows, valid = TripletMarginLoss(margin=margin).per_anchor(x, labels)
    miner = pml_miners.BatchHardMiner()
    mean_ref = pml_losses.TripletMarginLoss(margin=margin, reducer=pml_reducers.MeanReducer())
    assert masked_mean(ours_rows, valid).item() == pytest.approx(mean_ref(x, labels, miner(x, labels)).item(), abs=1e-5)
    nonzero = ours_rows[valid & (ours_rows > 0)]
    default_ref = pml_losses.TripletMarginLoss(margin=margin)(x, labels, miner(x, labels))  # AvgNonZeroReducer
    assert nonzero.mean().item() == pytest.approx(default_ref.item(), abs=1e-5)


@pytest.mark.parametrize("alpha,beta,base", [(2.0, 50.0, 0.5), (1.0, 10.0, 0.2)])
def test_multi_similarity_matches_pml(alpha, beta, base):
    x, labels = _embeddings(32, classes=5, seed=2)
    ours = MultiSimilarityLoss(alpha, beta, base)(x, labels)
    ref = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)(x, labels)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    assert build_metric_loss("multi_similarity")(x, labels).item() == pytest.approx(
        pml_losses.MultiSimilarityLoss()(x, labels).item(), abs=1e-5
    )


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_supcon_matches_pml(temperature):
    x, labels = _embeddings(32, classes=6, seed=3)
    ours = SupConLoss(temperature)(x, labels)
    ref = pml_losses.SupConLoss(temperature=temperature)(x, labels)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    x32 = x.float()
    assert SupConLoss(temperature)(x32, labels).item() == pytest.approx(ref.item(), abs=1e-5)


# --- masks, candidates, degenerate batches ------------------------------------------------------------------

METRIC_CASES = [
    ("supcon", {"temperature": 0.1}),
    ("triplet", {"margin": 0.2}),
    ("triplet", {"margin": 0.2, "distance": "cosine", "soft": True}),
    ("multi_similarity", {}),
]


@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_metric_mask_equals_dropping_rows(name, kwargs):
    """Masked-out rows are neither anchors nor candidates: same loss as without them, and no gradient."""
    loss_fn = build_metric_loss(name, **kwargs)
    x, labels = _embeddings(24, seed=4)
    mask = torch.ones_like(labels)
    mask[[1, 2, 9, 15, 20]] = 0
    keep = mask.bool()
    x = x.clone().requires_grad_(True)
    per_row, valid = loss_fn.per_anchor(x, labels, mask)
    sub_rows, sub_valid = loss_fn.per_anchor(x[keep].detach(), labels[keep])
    assert not valid[~keep].any() and (per_row[~keep] == 0).all()
    torch.testing.assert_close(per_row[keep], sub_rows)
    assert valid[keep].tolist() == sub_valid.tolist()
    assert loss_fn.num_anchors(labels, mask).item() == valid.sum().item()
    loss_fn(x, labels, mask).backward()
    assert (x.grad[~keep] == 0).all() and x.grad[keep].abs().sum() > 0


@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_metric_explicit_candidates_equal_default(name, kwargs):
    loss_fn = build_metric_loss(name, **kwargs)
    x, labels = _embeddings(16, seed=5)
    mask = (torch.arange(16) % 5 != 0).long()
    default = loss_fn.per_anchor(x, labels, mask)
    explicit = loss_fn.per_anchor(x, labels, mask, candidates=(x, labels, mask), self_index=torch.arange(16))
    torch.testing.assert_close(default[0], explicit[0])
    assert torch.equal(default[1], explicit[1])
    # Anchors = first half, candidates = everything (as if gathered from two processes).
    half = loss_fn.per_anchor(x[:8], labels[:8], mask[:8], candidates=(x, labels, mask), self_index=torch.arange(8))
    torch.testing.assert_close(half[0], default[0][:8])


def _degenerate_batches():
    x, _ = _embeddings(6)
    return [
        ("all masked", x, torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6, dtype=torch.long)),
        ("single row", x[:1], torch.tensor([0]), None),
        ("one in-loss row", x, torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 0, 0, 0, 0, 0])),
        ("no positive", x, torch.arange(6), None),
        ("no negative", x, torch.zeros(6, dtype=torch.long), None),
        ("duplicates", torch.cat([x[:3], x[:3]]), torch.tensor([0, 1, 2, 0, 1, 2]), None),
    ]


@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
@pytest.mark.parametrize("case", range(6))
def test_metric_degenerate_batches_finite(name, kwargs, case):
    """No valid pair gives exactly 0 with a finite (zero) gradient; identical rows give finite gradients."""
    title, x, labels, mask = _degenerate_batches()[case]
    loss_fn = build_metric_loss(name, **kwargs)
    x = x.float().clone().requires_grad_(True)
    per_row, valid = loss_fn.per_anchor(x, labels, mask)
    loss = masked_mean(per_row, valid)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), title
    assert loss_fn.num_anchors(labels, mask).item() == valid.sum().item(), title
    no_pair = title in ("all masked", "single row", "one in-loss row")
    no_anchor = no_pair or (title == "no positive" and name != "multi_similarity")
    no_anchor = no_anchor or (title == "no negative" and name == "triplet")
    if no_anchor:
        assert loss.item() == 0 and (grad == 0).all() and not valid.any(), title
    else:
        assert valid.any(), title
