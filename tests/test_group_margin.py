"""Pair-wise same-group margin of the target-margin heads: the formula, per head, and the model wiring."""

import math

import pytest
import torch
from test_model import ID2LABEL, _batch

from hf_metric.model.heads import build_head
from hf_metric.model.modeling import MetricClassifierModel


@pytest.mark.parametrize("head_type", ["arcface", "cosface", "subcenter_arcface"])
def test_same_group_classes_get_the_extra_margin_and_nothing_else_changes(head_type):
    torch.manual_seed(0)
    head = build_head(head_type, 8, 5, scale=16.0)
    x = torch.randn(6, 8, dtype=torch.float64)
    head = head.double()
    labels = torch.tensor([0, 1, 4, 2, -100, 3])
    groups = [0, 0, 1, 1, -1]
    extra = torch.zeros(6, 5, dtype=torch.float64)
    for i, y in enumerate(labels.tolist()):
        for j in range(5):
            if y >= 0 and groups[y] >= 0 and groups[j] == groups[y]:
                extra[i, j] = 0.2
    plain = head(x, labels)
    paired = head(x, labels, negative_margin=extra)
    cos = head.cosine(x)
    for i, y in enumerate(labels.tolist()):
        for j in range(5):
            if j == y:  # the target keeps its own margin
                assert paired[i, j].item() == pytest.approx(plain[i, j].item(), abs=1e-12)
            elif y >= 0:
                assert paired[i, j].item() == pytest.approx(16.0 * (cos[i, j].item() + extra[i, j].item()), abs=1e-9)
            else:  # an ignored row gets no margin at all
                assert paired[i, j].item() == pytest.approx(16.0 * cos[i, j].item(), abs=1e-9)
    assert math.isclose(paired[1, 0].item() - plain[1, 0].item(), 16.0 * 0.2, abs_tol=1e-9)


def test_the_model_puts_the_pair_margin_on_same_group_classes_in_training_only(tiny_model_dir):
    torch.manual_seed(0)
    kwargs = {"head_type": "cosface", "head_kwargs": {"scale": 10.0}, "classifier_dropout": 0.0}
    model = MetricClassifierModel.from_backbone(
        tiny_model_dir, ID2LABEL, class_group_ids=[0, 0, -1], same_group_pair_margin=0.3, **kwargs
    )
    model.train()
    batch = _batch()
    labels = batch["labels"]  # 0, 0, 1, 1, 2, 2
    paired = model(**batch).logits
    group_ids, model.class_group_ids = model.class_group_ids, None
    plain = model(**batch).logits
    expected = torch.zeros_like(plain)
    expected[labels == 0, 1] = 3.0  # s * 0.3: for rows of class 0, class 1 is in their group (and vice versa)
    expected[labels == 1, 0] = 3.0
    assert torch.allclose(paired - plain, expected, atol=1e-5)
    model.eval()  # inference: plain scaled cosines, with or without the groups
    without = model(**batch).logits
    model.class_group_ids = group_ids
    assert torch.allclose(model(**batch).logits, without)
