"""Losses and heads under mixed precision: float32 math under fp16/bf16 autocast, float32 results within 1e-3 of
naive float64 formulas, finite gradients on half-precision inputs (zero-distance pairs, zero vectors, batches
without positives or negatives), and the label -100 never counted as a class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_losses_extra import (
    _ref_focal,
    _ref_multi_similarity,
    _ref_supcon,
    _ref_triplet,
)

from hf_metric.model.heads import build_head
from hf_metric.model.losses import build_classification_loss, build_metric_loss, masked_mean
from hf_metric.model.objective import TrainingObjective

METRIC_CASES = [
    ("supcon", {"temperature": 0.1}),
    ("triplet", {"margin": 0.2}),
    ("triplet", {"margin": 0.2, "distance": "cosine", "soft": True}),
    ("multi_similarity", {}),
]
AUTOCASTS = [("cpu", torch.bfloat16), ("cpu", torch.float16)]
if torch.cuda.is_available():
    AUTOCASTS += [("cuda", torch.float16), ("cuda", torch.bfloat16)]


def _embeddings(n: int = 24, dim: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _metric_reference(name: str, kwargs: dict, x: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    if name == "supcon":
        return _ref_supcon(x, labels, kwargs["temperature"])
    if name == "triplet":
        return _ref_triplet(x, labels, kwargs["margin"], kwargs.get("distance", "euclidean"), kwargs.get("soft", False))
    return _ref_multi_similarity(x, labels, 2.0, 50.0, 0.5)


def _assert_relative(got: torch.Tensor, want: list[float | None], valid: torch.Tensor, rel: float = 1e-3) -> None:
    assert valid.tolist() == [w is not None for w in want]
    want_t = torch.tensor([0.0 if w is None else w for w in want], dtype=torch.float64)
    # relative to each row's own size, with a floor at 1e-3 of the batch's typical loss (near-zero hinge rows)
    scale = want_t.abs().clamp(min=1e-3 * max(want_t.abs().mean().item(), 1e-6))
    err = ((got.double() - want_t).abs() / scale).max().item()
    assert err <= rel, err


@pytest.mark.parametrize("device,dtype", AUTOCASTS)
@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_metric_losses_under_autocast_match_float64(device, dtype, name, kwargs):
    x64, labels = _embeddings()
    x = x64.float().to(device)
    with torch.autocast(device, dtype=dtype):
        per_row, valid = build_metric_loss(name, **kwargs).per_anchor(x, labels.to(device))
    assert per_row.dtype == torch.float32
    _assert_relative(per_row.cpu(), _metric_reference(name, kwargs, x64, labels), valid.cpu())


@pytest.mark.parametrize("device,dtype", AUTOCASTS)
@pytest.mark.parametrize("name", ["ce", "focal"])
def test_classification_losses_under_autocast_match_float64(device, dtype, name):
    g = torch.Generator().manual_seed(1)
    logits64, labels = 4 * torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (20,), generator=g)
    loss_fn = build_classification_loss(name)
    with torch.autocast(device, dtype=dtype):
        per_row, valid = loss_fn.per_row(logits64.float().to(device), labels.to(device))
    assert per_row.dtype == torch.float32 and valid.all()
    if name == "focal":
        want = _ref_focal(logits64, labels, 2.0, None)
    else:
        want = (-torch.log_softmax(logits64, dim=1).gather(1, labels[:, None]).squeeze(1)).tolist()
    _assert_relative(per_row.cpu(), want, valid.cpu())


@pytest.mark.parametrize("device,dtype", AUTOCASTS)
@pytest.mark.parametrize("head_type", ["linear", "cosine", "arcface", "subcenter_arcface", "cosface", "circle"])
def test_heads_under_autocast_return_float32_logits_of_the_float64_head(device, dtype, head_type):
    torch.manual_seed(0)
    head = build_head(head_type, 16, 5).to(device)
    x64, labels = _embeddings(classes=5)
    want = head.double()(x64.to(device), labels.to(device)).cpu()
    head.float()
    with torch.autocast(device, dtype=dtype):
        got = head(x64.float().to(device), labels.to(device))
    assert got.dtype == torch.float32
    err = ((got.cpu().double() - want).abs() / want.abs().mean()).max().item()
    assert err <= 1e-3, err


def _hard_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Duplicated rows (zero-distance positives and negatives), a zero vector, a -100 row and a masked row.

    A zero vector's normalisation gradient is ~1/eps (1e12): finite in float32 and bfloat16, but past float16's
    65504, so float16 inputs get a tiny vector instead (a zero embedding there is GradScaler's case: the step is
    skipped)."""
    x, _ = _embeddings(6, dim=8)
    zero = torch.zeros(1, 8) if dtype != torch.float16 else torch.full((1, 8), 1e-3)
    rows = torch.cat([x[:3], x[:3], zero, x[3:5]]).to(dtype)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 2, -100, 1])
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0])
    return rows, labels, mask


SINGLE_CLASS = (torch.zeros(6, dtype=torch.long), "no negative")
ALL_DIFFERENT = (torch.arange(6), "no positive")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_half_precision_inputs_give_finite_float32_losses_and_gradients(dtype, name, kwargs):
    loss_fn = build_metric_loss(name, **kwargs)
    x, labels, mask = _hard_batch(dtype)
    batches = [(x, labels, mask)] + [(x[:6], lab, None) for lab, _ in (SINGLE_CLASS, ALL_DIFFERENT)]
    for rows, lab, m in batches:
        rows = rows.clone().requires_grad_(True)
        loss = masked_mean(*loss_fn.per_anchor(rows, lab, m))
        (grad,) = torch.autograd.grad(loss, rows)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert grad.dtype == dtype and torch.isfinite(grad).all(), (name, lab)


@pytest.mark.parametrize("device,dtype", AUTOCASTS)
@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_gradients_stay_finite_under_autocast_through_a_linear_layer(device, dtype, name, kwargs):
    """The training path: a projection under autocast, the model's float32 normalisation, then the loss."""
    x, labels, mask = _hard_batch(dtype)
    x = x.float()
    layer = torch.nn.Linear(8, 8, bias=False).to(device)
    torch.nn.init.eye_(layer.weight)
    with torch.autocast(device, dtype=dtype):
        emb = F.normalize(layer(x.to(device)).float(), dim=-1)
        loss = masked_mean(*build_metric_loss(name, **kwargs).per_anchor(emb, labels.to(device), mask.to(device)))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_label_minus_100_is_no_class_in_metric_losses(name, kwargs):
    """Rows labelled -100 are neither anchors nor candidates: the loss equals the one without those rows."""
    x, labels = _embeddings(20, classes=3, seed=2)
    labels[[1, 4, 7, 9]] = -100
    kept = labels >= 0
    loss_fn = build_metric_loss(name, **kwargs)
    per_row, valid = loss_fn.per_anchor(x, labels)
    ref_rows, ref_valid = loss_fn.per_anchor(x[kept], labels[kept])
    assert not valid[~kept].any() and (per_row[~kept] == 0).all()
    torch.testing.assert_close(per_row[kept], ref_rows)
    assert valid[kept].tolist() == ref_valid.tolist()
    assert loss_fn.num_anchors(labels).item() == valid.sum().item()
    # the test can fail: treating -100 as a class changes the loss
    as_class = loss_fn.per_anchor(x, torch.where(kept, labels, torch.full_like(labels, 7)))[0]
    assert not torch.allclose(as_class[kept], ref_rows)


@pytest.mark.parametrize("name,kwargs", METRIC_CASES)
def test_label_minus_100_candidates_are_ignored(name, kwargs):
    x, labels = _embeddings(20, classes=3, seed=3)
    labels[[0, 5]] = -100
    kept = labels >= 0
    loss_fn = build_metric_loss(name, **kwargs)
    got, _ = loss_fn.per_anchor(x[10:], labels[10:], candidates=(x, labels, None), self_index=torch.arange(10, 20))
    want, _ = loss_fn.per_anchor(x[kept], labels[kept])
    torch.testing.assert_close(got, want[-10:])


def test_the_objective_keeps_registered_losses_in_float32_under_autocast():
    """A loss that knows nothing of precision still sees float32 similarities inside the objective."""
    seen = {}

    class Probe(torch.nn.Module):
        def per_anchor(self, embeddings, labels, mask=None, candidates=None, self_index=None):
            seen["dtype"] = (embeddings @ embeddings.T).dtype
            return embeddings.sum(dim=1), torch.ones_like(labels, dtype=torch.bool)

    objective = TrainingObjective(build_classification_loss("ce"), Probe(), metric_name="probe")
    emb, labels = _embeddings(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(torch.randn(8, 4), emb.float(), labels)
    assert seen["dtype"] == torch.float32 and out.loss.dtype == torch.float32
