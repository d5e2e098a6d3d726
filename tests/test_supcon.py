import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_metric.model.losses import SupConLoss, masked_cross_entropy, masked_mean


def naive_supcon(emb: np.ndarray, labels: np.ndarray, mask: np.ndarray, tau: float) -> float:
    """Khosla et al. eq. 2 (L_out), written as loops in float64."""
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows = [i for i in range(len(z)) if mask[i]]
    losses = []
    for i in rows:
        others = [a for a in rows if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(z[i] @ z[a] / tau) for a in others)
        losses.append(-sum(math.log(math.exp(z[i] @ z[p] / tau) / denom) for p in positives) / len(positives))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_supcon_matches_naive_float64_reference(seed, tau):
    rng = np.random.default_rng(seed)
    n = 24
    emb = rng.normal(size=(n, 16))
    labels = rng.integers(0, 5, size=n)
    mask = rng.random(n) > 0.25
    got = SupConLoss(tau)(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels), torch.tensor(mask))
    assert got.item() == pytest.approx(naive_supcon(emb, labels, mask, tau), rel=1e-5, abs=1e-5)


def test_num_anchors_counts_rows_with_a_positive():
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    mask = torch.tensor([1, 1, 1, 1, 0, 1])
    # row 0 and 1 pair up; 2 and 5 are alone; 3's only partner (4) is masked out
    assert SupConLoss.num_anchors(labels, mask).item() == 2
    _, valid = SupConLoss(0.1).per_anchor(torch.randn(6, 4), labels, mask)
    assert valid.tolist() == [True, True, False, False, False, False]


def test_no_positive_pair_gives_zero_and_finite_gradients():
    emb = torch.randn(4, 8, requires_grad=True)
    loss = SupConLoss(0.1)(emb, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()
    emb.grad = None
    loss = SupConLoss(0.1)(emb, torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 0, 0]))  # one row in the loss
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()


def test_masked_rows_get_no_supcon_gradient():
    emb = torch.randn(8, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    SupConLoss(0.1)(emb, labels, mask).backward()
    assert torch.all(emb.grad[6:] == 0) and torch.any(emb.grad[:6] != 0)


def test_masked_cross_entropy_matches_plain_ce_on_kept_rows():
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, -100, 1])
    mask = torch.tensor([1, 0, 1, 1, 1, 1])
    per_row, valid = masked_cross_entropy(logits, labels, mask)
    keep = torch.tensor([0, 2, 3, 5])
    assert valid.nonzero().flatten().tolist() == keep.tolist()
    expected = F.cross_entropy(logits[keep].double(), labels[keep])
    assert masked_mean(per_row, valid).item() == pytest.approx(expected.item(), rel=1e-6)
    none = masked_mean(*masked_cross_entropy(logits, labels, torch.zeros(6)))
    assert none.item() == 0.0
