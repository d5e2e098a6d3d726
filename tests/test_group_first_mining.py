"""Same-group-first hard negatives (`loss.metric.same_group_first` for triplet and multi-similarity): each anchor's
negatives are mined among the classes of its own group when it has any there, checked against a float64 loop."""

import numpy as np
import pytest
import torch
from conftest import write_parquet
from test_group_training import _grouped_rows

from hf_metric.errors import ConfigError
from hf_metric.loading import load_config
from hf_metric.model.metric_losses import MultiSimilarityLoss, TripletMarginLoss

GROUP_OF_CLASS = [0, 0, 1, 1, -1]  # classes 0,1 in group 0; 2,3 in group 1; class 4 in none


def _negatives(labels, i, groups):
    """Naive: candidates of another label; only those of the anchor's group when there are any."""
    others = [j for j in range(len(labels)) if labels[j] != labels[i]]
    g = groups[labels[i]]
    same = [j for j in others if g >= 0 and groups[labels[j]] == g]
    return same or others


def _naive_triplet(z, labels, groups, margin):
    losses = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = _negatives(labels, i, groups)
        if pos and neg:
            d = lambda j, i=i: np.linalg.norm(z[i] - z[j])  # noqa: E731
            losses.append(max(max(d(j) for j in pos) - min(d(j) for j in neg) + margin, 0.0))
    return np.mean(losses)


def _naive_ms(z, labels, groups, alpha, beta, base):
    losses = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = _negatives(labels, i, groups)
        s = lambda j, i=i: float(z[i] @ z[j])  # noqa: E731
        pos_term = np.log1p(sum(np.exp(-alpha * (s(j) - base)) for j in pos)) / alpha
        neg_term = np.log1p(sum(np.exp(beta * (s(j) - base)) for j in neg)) / beta
        losses.append(pos_term + neg_term)
    return np.mean(losses)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 1])
    emb = torch.randn(len(labels), 8, generator=g, dtype=torch.float64)
    z = (emb / emb.norm(dim=1, keepdim=True)).numpy()
    return emb, labels, z


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_mines_same_group_negatives_first(seed):
    emb, labels, z = _batch(seed)
    loss = TripletMarginLoss(margin=0.3, same_group_first=True)
    loss.use_class_groups(GROUP_OF_CLASS)
    expected = _naive_triplet(z, labels.tolist(), GROUP_OF_CLASS, 0.3)
    assert loss(emb, labels).item() == pytest.approx(expected, rel=1e-5)
    plain = TripletMarginLoss(margin=0.3)
    plain_expected = _naive_triplet(z, labels.tolist(), [-1] * 5, 0.3)
    assert plain(emb, labels).item() == pytest.approx(plain_expected, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_multi_similarity_mines_same_group_negatives_first(seed):
    emb, labels, z = _batch(seed)
    loss = MultiSimilarityLoss(same_group_first=True)
    loss.use_class_groups(GROUP_OF_CLASS)
    expected = _naive_ms(z, labels.tolist(), GROUP_OF_CLASS, 2.0, 50.0, 0.5)
    assert loss(emb, labels).item() == pytest.approx(expected, rel=1e-5)


def test_without_groups_or_with_one_group_it_is_the_plain_loss():
    emb, labels, _ = _batch(3)
    plain = TripletMarginLoss()(emb, labels)
    unset = TripletMarginLoss(same_group_first=True)  # no class groups given: nothing to mine by
    one = TripletMarginLoss(same_group_first=True)
    one.use_class_groups([0] * 5)
    assert unset(emb, labels).item() == plain.item() == one(emb, labels).item()


def test_same_group_first_reaches_the_loss_from_yaml(tmp_path, make_config):
    from hf_metric.run import build_trainer

    data = write_parquet(tmp_path / "g.parquet", _grouped_rows())
    loss = {"metric": {"type": "triplet", "weight": 1.0, "same_group_first": True}}
    trainer = build_trainer(load_config(make_config(data, loss=loss, training={"num_epochs": 1})), report_to=[])
    metric = trainer.model.objective.metric
    config = trainer.model.config
    assert metric.same_group_first and metric.class_groups.tolist() == config.class_group_ids
    assert config.same_group_pair_margin == 0.0 and trainer.model.class_group_ids is None  # no head margin asked
    trainer.train()
    assert trainer.state.global_step > 0

    plain = write_parquet(
        tmp_path / "p.parquet", [{k: v for k, v in r.items() if k != "group"} for r in _grouped_rows()]
    )
    with pytest.raises(ConfigError, match="same_group_first"):
        build_trainer(load_config(make_config(plain, loss=loss)))
