"""A user's own loss and head, registered from a module outside hf_metric, are selected and validated from YAML
like the built-ins; the old flat loss keys still work with a FutureWarning."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_run_config

import hf_metric
from hf_metric.cli import main
from hf_metric.errors import ConfigError
from hf_metric.loading import config_from_dict

USER_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn

import hf_metric


@hf_metric.register_metric_loss("toy_center")
class ToyCenterLoss(hf_metric.MetricLoss):
    """Mean (1 - cosine) to the anchor's positives, times `scale`."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = scale

    def per_anchor(self, embeddings, labels, mask=None, candidates=None, self_index=None):
        pairs = self.pairs(embeddings, labels, mask, candidates, self_index)
        n_pos = pairs.positive.sum(dim=1)
        dist = torch.where(pairs.positive, 1 - pairs.sim, torch.zeros_like(pairs.sim)).sum(dim=1)
        return self.scale * dist / n_pos.clamp(min=1), n_pos > 0


@hf_metric.register_head("toy_bilinear")
class ToyHead(nn.Module):
    def __init__(self, in_features: int, num_labels: int, rank: int = 2) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError("rank must be >= 1")
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, num_labels)

    def forward(self, embeddings, labels=None, margin=None):
        return self.up(self.down(embeddings))
'''


@pytest.fixture
def user_module(install_user_module):
    """`toy_plugins.py` in a folder outside the package, importable by name (as a user's own module would be)."""
    yield install_user_module("toy_plugins", USER_MODULE)
    hf_metric.METRIC_LOSSES.pop("toy_center", None)
    hf_metric.HEADS.pop("toy_bilinear", None)


_raw = synthetic_run_config


def test_a_registered_loss_and_head_train_two_steps_from_yaml(tmp_path, tiny_model_dir, user_module):
    raw = _raw(
        tmp_path,
        tiny_model_dir,
        imports=[user_module],
        head={"type": "toy_bilinear", "rank": 3},
        loss={"metric": {"type": "toy_center", "weight": 0.5, "scale": 2.0}},
        scheduler={"num_training_steps": 2, "warmup_steps": 0},
        checkpointing={"checkpoints_dir": str(tmp_path / "ckpt"), "save_best_by": "toy_center_loss"},
        metric_validation={"plots": False},
    )
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert np.isfinite(metrics["eval_toy_center_loss"]) and metrics["eval_toy_center_loss"] >= 0
    state = json.loads(next((tmp_path / "ckpt").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [row["toy_center_loss"] for row in state["log_history"] if "toy_center_loss" in row]
    assert logged and all(np.isfinite(logged))
    saved = json.loads((tmp_path / "ckpt" / "best" / "config.json").read_text())
    assert saved["metric_loss"] == "toy_center" and saved["metric_loss_kwargs"] == {"scale": 2.0}
    assert saved["head_type"] == "toy_bilinear" and saved["head_kwargs"]["rank"] == 3


def test_the_objective_computes_a_registered_loss_like_a_naive_loop(user_module):
    __import__(user_module)
    objective = hf_metric.TrainingObjective(
        hf_metric.model.losses.CrossEntropyLoss(), hf_metric.METRIC_LOSSES["toy_center"](scale=2.0), 0.0, 1.0
    )
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(12, 5)), rng.integers(0, 3, size=12)
    mask = rng.random(12) > 0.2
    out = objective(torch.zeros(12, 3), torch.tensor(emb), torch.tensor(labels), None, torch.tensor(mask))
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows = []
    for i in range(12):
        pos = [j for j in range(12) if j != i and mask[i] and mask[j] and labels[j] == labels[i]]
        if pos:
            rows.append(2.0 * np.mean([1 - z[i] @ z[j] for j in pos]))
    assert out.metric.item() == pytest.approx(np.mean(rows), rel=1e-9)
    assert out.loss.item() == pytest.approx(np.mean(rows), rel=1e-9)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            {"loss": {"metric": {"type": "toy_center", "scael": 2.0}}},
            r"loss\.metric\.scael: unknown key \(did you mean loss\.metric\.scale\?\)",
        ),
        ({"loss": {"metric": {"type": "toy_center", "scale": -1.0}}}, r"loss\.metric: scale must be > 0"),
        ({"loss": {"metric": {"type": "toy_center", "scale": "big"}}}, r"loss\.metric\.scale: expected a number"),
        ({"head": {"type": "toy_bilinear", "rank": 0}}, r"head: rank must be >= 1"),
        ({"head": {"type": "toy_bilinear", "rnk": 2}}, r"head\.rnk: unknown key \(did you mean head\.rank\?\)"),
    ],
)
def test_a_registered_class_is_validated_like_the_built_ins(tmp_path, tiny_model_dir, user_module, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(_raw(tmp_path, tiny_model_dir, imports=[user_module], **overrides))


def test_an_unimportable_module_is_a_one_line_error(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"imports: cannot import 'no_such_module_here'"):
        config_from_dict(_raw(tmp_path, tiny_model_dir, imports=["no_such_module_here"]))


def test_registering_a_taken_name_is_refused(user_module):
    __import__(user_module)
    with pytest.raises(ValueError, match="already registered"):
        hf_metric.register_metric_loss("supcon")(type("Other", (hf_metric.MetricLoss,), {}))


def test_old_flat_loss_keys_move_into_the_loss_section_with_a_warning(tmp_path, tiny_model_dir):
    raw = _raw(tmp_path, tiny_model_dir, loss={})
    raw.pop("loss")
    raw["training"].update(
        metric_loss="triplet", triplet_margin=0.3, supcon_temperature=0.5, classification_loss_weight=0.7
    )
    with pytest.warns(FutureWarning, match=r"training\.triplet_margin is deprecated, use loss\.metric\.margin"):
        cfg = config_from_dict(raw)
    assert cfg.loss.metric.type == "triplet" and cfg.loss.metric.options["margin"] == 0.3
    assert "temperature" not in cfg.loss.metric.options  # applied to supcon only, as before
    assert cfg.loss.classification.weight == 0.7
    raw["loss"] = {"metric": {"margin": 0.1}}
    with pytest.raises(ConfigError, match=r"training\.triplet_margin: given together with loss\.metric\.margin"):
        config_from_dict(raw)
