"""Per-parameter learning rates: head multiplier and layer-wise decay, checked parameter by parameter."""

import pytest
import torch
from conftest import synthetic_rows, write_parquet

from hf_metric.loading import load_config
from hf_metric.run import build_trainer
from hf_metric.training.optim import learning_rate_scale, parameter_groups


@pytest.fixture
def make_trainer(tmp_path, make_config):
    def _make(**optimizer):
        data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
        return build_trainer(load_config(make_config(data, optimizer={"learning_rate": 1e-3, **optimizer})))

    return _make


def _lr_of(groups):
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize(("head_mult", "decay"), [(1.0, 1.0), (10.0, 0.8)])
def test_groups_follow_the_rule_for_every_parameter(make_trainer, head_mult, decay):
    model = make_trainer().model
    names = [n for n, _ in model.named_parameters()]
    decay_names = [n for n in names if "bias" not in n and "LayerNorm" not in n]
    groups = parameter_groups(model, 1e-3, 0.01, decay_names, head_mult, decay)
    lr_of = _lr_of(groups)
    assert sum(len(g["params"]) for g in groups) == len(names)  # every trainable parameter exactly once
    num_layers = model.config.encoder_config.num_hidden_layers
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            expected = head_mult
        elif ".layer." in name:
            expected = decay ** (num_layers - 1 - int(name.split(".layer.")[1].split(".")[0]))
        elif "embeddings" in name:
            expected = decay**num_layers
        else:
            expected = 1.0
        assert lr_of[id(p)][0] == pytest.approx(1e-3 * expected), name
        assert lr_of[id(p)][1] == (0.01 if name in decay_names else 0.0), name


def test_scale_examples():
    assert learning_rate_scale("head.weight", 6, 10.0, 0.9) == 10.0
    assert learning_rate_scale("backbone.encoder.layer.5.output.dense.weight", 6, 1.0, 0.5) == 1.0
    assert learning_rate_scale("backbone.encoder.layer.0.output.dense.weight", 6, 1.0, 0.5) == 0.5**5
    assert learning_rate_scale("backbone.embeddings.word_embeddings.weight", 6, 1.0, 0.5) == 0.5**6


def test_trainer_uses_the_groups(make_trainer):
    trainer = make_trainer(head_lr_multiplier=5.0, layerwise_lr_decay=0.5)
    optimizer = trainer.create_optimizer()
    head_params = {id(p) for p in trainer.model.head.parameters()}
    head_lrs = {g["lr"] for g in optimizer.param_groups if any(id(p) in head_params for p in g["params"])}
    assert head_lrs == {trainer.args.learning_rate * 5.0}
    assert len({g["lr"] for g in optimizer.param_groups}) > 2
    assert isinstance(optimizer, torch.optim.AdamW)
