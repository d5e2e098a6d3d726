"""Cross-batch memory (`training.bank_negatives`): past embeddings join the metric loss as extra candidates,
checked against a naive float64 SupCon over batch + memory, and end to end in a tiny run."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_rows, tiny_config, write_parquet

from hf_metric.cli import main
from hf_metric.errors import ConfigError
from hf_metric.loading import config_from_dict
from hf_metric.model.losses import CrossEntropyLoss, MultiSimilarityLoss, SupConLoss, TripletMarginLoss
from hf_metric.model.objective import TrainingObjective


def naive_supcon_with_memory(emb, labels, mask, mem_emb, mem_labels, temperature):
    """Anchors: batch rows in the loss with a positive among batch + memory; candidates: every other row."""
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    zm = mem_emb / np.linalg.norm(mem_emb, axis=1, keepdims=True)
    cand = np.concatenate([z, zm])
    cand_labels = np.concatenate([labels, mem_labels])
    cand_in = np.concatenate([mask, np.ones(len(mem_labels), bool)])
    losses = []
    for i in range(len(z)):
        if not mask[i]:
            continue
        others = [j for j in range(len(cand)) if j != i and cand_in[j]]
        positives = [j for j in others if cand_labels[j] == labels[i]]
        if not positives:
            continue
        logits = {j: z[i] @ cand[j] / temperature for j in others}
        log_denominator = np.log(sum(np.exp(v) for v in logits.values()))
        losses.append(-np.mean([logits[p] - log_denominator for p in positives]))
    return float(np.mean(losses)), len(losses)


def test_supcon_with_memory_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    emb, labels, mask = rng.normal(size=(10, 6)), rng.integers(0, 4, size=10), rng.random(10) > 0.2
    mem_emb, mem_labels = rng.normal(size=(15, 6)), rng.integers(0, 5, size=15)  # class 4 only in memory
    objective = TrainingObjective(CrossEntropyLoss(), SupConLoss(0.2), 0.0, 1.0)
    t = torch.as_tensor
    memory = (t(mem_emb), t(mem_labels))
    out = objective(torch.zeros(10, 4), t(emb), t(labels), None, t(mask), memory=memory)
    expected, anchors = naive_supcon_with_memory(emb, labels, mask, mem_emb, mem_labels, 0.2)
    assert out.metric.item() == pytest.approx(expected, rel=1e-9)
    assert objective.metric_count(t(labels), t(mask), t(mem_labels)).item() == anchors


@pytest.mark.parametrize("loss", [SupConLoss(0.1), TripletMarginLoss(), MultiSimilarityLoss()])
def test_anchor_count_with_memory_equals_the_rows_the_loss_uses(loss):
    rng = np.random.default_rng(1)
    labels, mask = torch.as_tensor(rng.integers(0, 6, size=12)), torch.as_tensor(rng.random(12) > 0.3)
    mem_labels = torch.as_tensor(rng.integers(0, 6, size=7))
    objective = TrainingObjective(CrossEntropyLoss(), loss, 0.0, 1.0)
    emb, mem = torch.randn(12, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    keep = mask.to(torch.int64)
    candidates = (torch.cat([emb, mem]), torch.cat([labels, mem_labels]), torch.cat([keep, torch.ones(7).long()]))
    _, valid = loss.per_anchor(emb, labels, keep, candidates=candidates, self_index=torch.arange(12))
    assert objective.metric_count(labels, mask, mem_labels).item() == valid.sum().item()


def test_memory_passes_no_gradient():
    emb = torch.randn(8, 4, requires_grad=True)
    mem = torch.randn(6, 4, requires_grad=True)
    labels, mem_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([0, 1, 2, 3, 0, 1])
    objective = TrainingObjective(CrossEntropyLoss(), SupConLoss(0.1), 0.0, 1.0)
    objective(torch.zeros(8, 4), emb, labels, memory=(mem, mem_labels)).loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and mem.grad is None


def _raw(tmp_path, tiny_model_dir, **overrides):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    return tiny_config(tiny_model_dir, data, tmp_path / "ckpt", **overrides)


def test_a_memory_larger_than_the_bank_is_refused(tmp_path, tiny_model_dir):
    raw = _raw(tmp_path, tiny_model_dir, metric_validation={"keep_last_n_emb_steps": 2})
    raw["training"]["bank_negatives"] = {"size": 100, "start_step": 0}  # 2 steps x 8 rows = 16 held
    with pytest.raises(ConfigError, match=r"training\.bank_negatives\.size: \(100\) exceeds the rows the bank"):
        config_from_dict(raw)


def test_a_run_with_bank_negatives_trains_and_logs_the_metric_loss(tmp_path, tiny_model_dir):
    raw = _raw(tmp_path, tiny_model_dir, scheduler={"num_training_steps": 6, "warmup_steps": 0})
    raw["training"].update(bank_negatives={"size": 32, "start_step": 2}, logging_steps=1)
    raw["metric_validation"] = {"plots": False, "keep_last_n_emb_steps": 8}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    state = json.loads(next((tmp_path / "ckpt").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [row["supcon_loss"] for row in state["log_history"] if "supcon_loss" in row]
    assert len(logged) >= 6 and all(np.isfinite(logged))
