"""Non-finite guard: injected NaN losses and inf gradients skip the optimizer step (weights, optimizer and
scheduler untouched), are counted and logged; too many in a row stop the run with its last good checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import synthetic_rows, write_parquet
from safetensors.torch import load_file

from hf_metric.errors import TrainingDivergedError
from hf_metric.loading import load_config
from hf_metric.run import build_trainer
from hf_metric.training.trainer import MetricClassifierTrainer


def _inject_nan_loss(monkeypatch, bad_steps):
    """Every micro-batch loss of the optimizer steps in `bad_steps` (1-based) becomes NaN."""
    original = MetricClassifierTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = original(self, model, inputs, return_outputs, num_items_in_batch)
        if self.model.training and self.state.global_step + 1 in bad_steps:
            return out * float("nan") if not return_outputs else (out[0] * float("nan"), out[1])
        return out

    monkeypatch.setattr(MetricClassifierTrainer, "compute_loss", compute_loss)


class _Snapshots:
    """Weights, optimizer step count and learning rate after every optimizer step."""

    def __init__(self, trainer):
        self.weights, self.adam_steps, self.lrs = {}, {}, {}
        self.trainer = trainer
        trainer.add_callback(self)

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in t.model.named_parameters()}
        p = next(iter(t.optimizer.state))
        self.adam_steps[state.global_step] = int(t.optimizer.state[p]["step"])
        self.lrs[state.global_step] = t.lr_scheduler.get_last_lr()[0]


def _config(tmp_path, make_config, **training):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    return load_config(
        make_config(
            data,
            training={"logging_steps": 1, "num_epochs": 1, **training},
            scheduler={"name": "linear", "warmup_steps": 0},
            checkpointing={"save_every_n_batches": 2, "save_total_limit": 10},
        )
    )


def test_a_nan_loss_step_is_skipped_counted_and_logged(tmp_path, make_config, monkeypatch, caplog):
    _inject_nan_loss(monkeypatch, {3})
    trainer = build_trainer(_config(tmp_path, make_config))
    snaps = _Snapshots(trainer)
    trainer.train()
    w = snaps.weights
    for key in w[2]:  # step 3 changed nothing; every other step changed the weights
        assert torch.equal(w[2][key], w[3][key]), key
    assert any(not torch.equal(w[3][k], w[4][k]) for k in w[3])
    assert snaps.adam_steps[2] == 2 and snaps.adam_steps[3] == 2 and snaps.adam_steps[4] == 3
    assert snaps.lrs[3] == snaps.lrs[2] and snaps.lrs[4] < snaps.lrs[3]  # the scheduler skipped too
    assert all(torch.isfinite(v).all() for v in trainer.model.parameters())
    logged = [h["nonfinite_steps"] for h in trainer.state.log_history if "nonfinite_steps" in h]
    assert logged[:2] == [0, 0] and logged[-1] == 1
    assert "step 3: non-finite loss, optimizer step skipped" in caplog.text


def test_an_inf_gradient_with_a_finite_loss_is_skipped(tmp_path, make_config):
    trainer = build_trainer(_config(tmp_path, make_config, gradient_clip_val=None))
    snaps = _Snapshots(trainer)
    weight = trainer.model.head.linear.weight
    weight.register_hook(lambda g: g * float("inf") if trainer.state.global_step + 1 == 2 else g)
    trainer.train()
    w = snaps.weights
    assert all(torch.equal(w[1][k], w[2][k]) for k in w[1])
    assert snaps.adam_steps[2] == 1 and trainer.nonfinite_steps == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.parameters())


def test_consecutive_nonfinite_steps_stop_with_the_last_good_checkpoint(tmp_path, make_config, monkeypatch):
    _inject_nan_loss(monkeypatch, set(range(5, 100)))
    cfg = _config(tmp_path, make_config, max_nonfinite_steps=3, num_epochs=4)
    trainer = build_trainer(cfg)
    with pytest.raises(TrainingDivergedError) as err:
        trainer.train()
    message = str(err.value)
    out = cfg.checkpointing.checkpoints_dir
    assert "\n" not in message and "at step 7: 3 consecutive" in message
    assert f"last good checkpoint: {os.path.join(out, 'checkpoint-6')}" in message
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint")) == [f"checkpoint-{s}" for s in (2, 4, 6)]
    # checkpoint-6 holds the weights after step 4 (steps 5 and 6 were skipped), all finite
    with open(os.path.join(out, "checkpoint-6", "trainer_state.json")) as fh:
        assert json.load(fh)["global_step"] == 6
    w4, w6 = (load_file(os.path.join(out, f"checkpoint-{s}", "model.safetensors")) for s in (4, 6))
    assert all(torch.equal(w4[k], w6[k]) and torch.isfinite(w6[k]).all() for k in w6)


def test_max_nonfinite_steps_is_validated(tmp_path, make_config):
    from hf_metric.errors import ConfigError

    with pytest.raises(ConfigError, match=r"training\.max_nonfinite_steps"):
        _config(tmp_path, make_config, max_nonfinite_steps=0)
