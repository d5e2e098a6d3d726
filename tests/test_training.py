"""Trainer behaviour on the tiny model: accumulation, resume, atomic checkpoints, and an end-to-end run."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_rows, write_parquet
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler

from hf_metric.cli import main
from hf_metric.evaluation.tables import metrics_markdown_table
from hf_metric.loading import load_config
from hf_metric.model.losses import masked_cross_entropy
from hf_metric.run import build_trainer, train


def _masked_rows(seed=0, per_class=12):
    rows = synthetic_rows(per_class, seed=seed)
    rng = np.random.default_rng(seed)
    for row in rows:  # uneven masks, so micro-batches hold different numbers of CE rows and anchors
        row["classifier_mask"] = int(rng.random() > 0.35)
        row["metric_mask"] = int(rng.random() > 0.2) if row["classifier_mask"] else 1
    return rows


def _sequential_trainer(config_path, **overrides):
    trainer = build_trainer(load_config(config_path), max_steps=1, report_to=[], **overrides)
    trainer._get_train_sampler = lambda dataset=None: SequentialSampler(dataset or trainer.train_dataset)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
    return trainer


def _one_step(config_path, initial_state, **overrides):
    """Parameters before minus after one SGD(lr=1) step = the gradient the Trainer applied."""
    trainer = _sequential_trainer(config_path, **overrides)
    trainer.model.load_state_dict(initial_state)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    return {k: before[k] - v.detach() for k, v in trainer.model.named_parameters()}, trainer


def _assert_close(a, b, atol=2e-6):
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=1e-4), key


@pytest.fixture
def masked_config(tmp_path, make_config):
    return lambda **o: make_config(write_parquet(tmp_path / "m.parquet", _masked_rows()), **o)


def test_ce_accumulation_2x8_equals_one_batch_of_16(masked_config):
    config = masked_config(
        training={"sampler": "random", "gradient_clip_val": None, "batch_size": 8}, loss={"metric": {"weight": 0.0}}
    )
    initial = _sequential_trainer(config).model.state_dict()
    accumulated, trainer = _one_step(config, initial, gradient_accumulation_steps=2)
    batch_of_16, _ = _one_step(config, initial, per_device_train_batch_size=16)
    ce_counts = [int(b["classifier_mask"].sum()) for b in list(trainer.get_train_dataloader())[:2]]
    assert ce_counts[0] != ce_counts[1]  # the equality below is not a coincidence of even masks
    _assert_close(accumulated, batch_of_16)


def test_accumulated_loss_is_normalised_over_the_whole_window(masked_config):
    """CE + SupCon with GA=2: the update equals the gradient of (sum of parts) / (window counts)."""
    config = masked_config(training={"sampler": "random", "gradient_clip_val": None}, loss={"metric": {"weight": 0.5}})
    first = _sequential_trainer(config)
    initial = {k: v.clone() for k, v in first.model.state_dict().items()}
    accumulated, trainer = _one_step(config, initial, gradient_accumulation_steps=2)

    model = first.model
    model.load_state_dict(initial)
    model.train()
    batches = list(trainer.get_train_dataloader())[:2]
    ce_sum, sc_sum, n_ce, n_sc = 0.0, 0.0, 0, 0
    for batch in batches:
        out = model(**batch)
        rows, valid = masked_cross_entropy(out.logits, batch["labels"], batch["classifier_mask"])
        ce_sum, n_ce = ce_sum + rows.sum(), n_ce + int(valid.sum())
        rows, valid = model.objective.metric.per_anchor(out.embeddings, batch["labels"], batch["metric_mask"])
        sc_sum, n_sc = sc_sum + rows.sum(), n_sc + int(valid.sum())
    model.zero_grad()
    (ce_sum / n_ce + 0.5 * sc_sum / n_sc).backward()
    expected = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    _assert_close({k: accumulated[k] for k in expected}, expected)


def _log_losses(trainer_state_path):
    with open(trainer_state_path) as fh:
        state = json.load(fh)
    return {h["step"]: (h["loss"], h["ce_loss"], h["supcon_loss"]) for h in state["log_history"] if "loss" in h}


def test_resume_continues_the_uninterrupted_run(tmp_path, make_config):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    common = {
        "training": {"logging_steps": 1, "num_epochs": 3},
        "checkpointing": {"save_every_n_batches": 4, "save_total_limit": 10},
    }
    full_cfg = make_config(data, **common)
    full = load_config(full_cfg)
    train(full)
    full_dir = full.checkpointing.checkpoints_dir
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(full_dir) if d.startswith("checkpoint-"))
    assert steps[0] == 4 and len(steps) >= 3

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(os.path.join(full_dir, "checkpoint-4"), resumed_dir / "checkpoint-4")
    raw = yaml.safe_load(full_cfg.read_text())
    raw["checkpointing"]["checkpoints_dir"] = str(resumed_dir)
    raw["training"]["resume_from"] = "latest"
    full_cfg.write_text(yaml.safe_dump(raw))
    train(load_config(full_cfg))

    last = f"checkpoint-{steps[-1]}"
    expected = _log_losses(os.path.join(full_dir, last, "trainer_state.json"))
    got = _log_losses(resumed_dir / last / "trainer_state.json")
    after = [s for s in expected if s > 4]
    assert after and all(s in got for s in after)
    for step in after:
        assert np.allclose(got[step], expected[step], rtol=1e-4, atol=1e-5), (step, got[step], expected[step])
    for name in ("model.safetensors", "embedding_bank.safetensors"):  # the bank survives the resume too
        a = load_file(os.path.join(full_dir, last, name))
        b = load_file(resumed_dir / last / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), (name, key)


def test_an_interrupted_save_leaves_no_partial_checkpoint(tmp_path, make_config, monkeypatch):
    from hf_metric.training.trainer import MetricClassifierTrainer

    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    cfg = load_config(make_config(data, checkpointing={"save_every_n_batches": 3, "save_total_limit": 10}))
    original = MetricClassifierTrainer._save_rng_state
    calls = {"n": 0}

    def failing(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(self, output_dir)

    monkeypatch.setattr(MetricClassifierTrainer, "_save_rng_state", failing)
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    out = cfg.checkpointing.checkpoints_dir
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-3"]
    complete = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    assert complete <= set(os.listdir(os.path.join(out, "checkpoint-3")))


def test_two_epoch_run_learns_well_above_chance(tmp_path, make_config, capsys):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(60, seed=1))
    config = make_config(
        data,
        optimizer={"learning_rate": 1e-2},
        metric_validation={"keep_last_n_emb_steps": 3, "recall_at_k": [1, 3]},
        checkpointing={"save_best_by": "knn_f1"},
    )
    assert main(["--config", str(config)]) == 0
    out_dir = tmp_path / "ckpt"
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["eval_accuracy"] > 0.8 and metrics["eval_f1"] > 0.8  # chance is 0.25
    assert metrics["eval_bank_size"] == 3 * 8  # the last 3 optimizer steps of full 8-row P x K batches
    assert metrics["eval_bank_num_classes"] == 4
    assert metrics["eval_recall@1"] <= metrics["eval_recall@3"] and metrics["eval_recall@3"] > 0.8
    assert metrics["eval_knn_accuracy"] > 0.8 and metrics["eval_top5_accuracy"] == 1.0  # 4 classes < 5
    assert metrics["eval_distinct_predictions"] == 4
    last = max((d for d in os.listdir(out_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    state = json.loads((out_dir / last / "trainer_state.json").read_text())
    assert state["best_metric"] == max(h["eval_knn_f1"] for h in state["log_history"] if "eval_knn_f1" in h)
    assert "Final validation metrics" in capsys.readouterr().out
    card = (out_dir / "best" / "README.md").read_text()  # written without hub.push_to_hub too
    assert metrics_markdown_table(metrics) in card
    assert (out_dir / "best" / "head.safetensors").is_file()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_metric  # noqa: F401

    model = AutoModelForSequenceClassification.from_pretrained(out_dir / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "best")
    fresh = synthetic_rows(10, seed=99)  # rows the run never saw
    with torch.no_grad():
        batch = tokenizer([r["text"] for r in fresh], return_tensors="pt", padding=True)
        pred = model(**batch).logits.argmax(-1)
    hits = [model.config.id2label[int(i)] == r["label"] for i, r in zip(pred, fresh, strict=True)]
    assert np.mean(hits) > 0.8


@pytest.mark.parametrize(
    "overrides",
    [
        {"head": {"type": "arcface", "scale": 16, "margin": 0.2, "group_margin": {"same": 0.3, "default": 0.1}}},
        {"head": {"type": "circle"}, "loss": {"classification": {"type": "focal"}, "metric": {"type": "triplet"}}},
        {"head": {"type": "subcenter_arcface", "scale": 16}, "loss": {"metric": {"type": "multi_similarity"}}},
    ],
)
def test_heads_and_losses_train_from_yaml(tmp_path, make_config, overrides):
    rows = synthetic_rows(30, seed=2)
    for row in rows:  # billing and card share a group, so they get the larger margin
        row["group"] = "money" if row["label"] in ("billing", "card") else row["label"]
    config = make_config(write_parquet(tmp_path / "d.parquet", rows), optimizer={"learning_rate": 1e-2}, **overrides)
    cfg = load_config(config)
    metrics = train(cfg)
    assert np.isfinite(metrics["eval_loss"]) and metrics["eval_accuracy"] > 0.25
    saved = json.loads((tmp_path / "ckpt" / "best" / "config.json").read_text())
    assert saved["head_type"] == cfg.head.type
    if cfg.head.group_margin is not None:
        assert saved["class_margins"] == [0.1, 0.3, 0.3, 0.1]  # sorted labels: account, billing, card, delivery


def test_collapsed_predictions_are_flagged_and_healthy_ones_are_not(tmp_path, make_config, caplog):
    from transformers.trainer_utils import EvalLoopOutput

    trainer = build_trainer(load_config(make_config(write_parquet(tmp_path / "d.parquet", synthetic_rows(10)))))
    labels = np.repeat(np.arange(4), 5)
    ones = np.ones(20, dtype=np.int64)
    emb = np.random.default_rng(0).normal(size=(20, 32)).astype(np.float32)

    def metrics_for(logits):
        output = EvalLoopOutput(predictions=(logits, emb), label_ids=(labels, ones, ones), metrics={}, num_samples=20)
        return trainer.prediction_metrics(output, "eval")

    collapsed = np.zeros((20, 4), dtype=np.float32)
    collapsed[:, 2] = 5.0  # every row predicted as class 2
    with caplog.at_level("WARNING"):
        m = metrics_for(collapsed)
    assert m["eval_distinct_predictions"] == 1 and m["eval_prediction_entropy"] == 0.0
    assert "prediction collapse" in caplog.text
    caplog.clear()
    healthy = np.eye(4, dtype=np.float32)[labels] * 5
    with caplog.at_level("WARNING"):
        m = metrics_for(healthy)
    assert m["eval_distinct_predictions"] == 4 and m["eval_prediction_entropy"] == pytest.approx(np.log(4))
    assert "prediction collapse" not in caplog.text


def test_validation_losses_cover_the_whole_set_at_once(tmp_path, make_config):
    from test_supcon import naive_supcon

    cfg = load_config(
        make_config(write_parquet(tmp_path / "d.parquet", synthetic_rows(10)), loss={"metric": {"weight": 0.5}})
    )
    trainer = build_trainer(cfg)
    rng = np.random.default_rng(0)
    n = 1100  # more than one chunk (1024) of anchors
    logits, emb = rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 32)).astype(np.float32)
    labels = rng.integers(0, 4, size=n)
    ce_rows, metric_rows = rng.random(n) > 0.3, rng.random(n) > 0.2
    objective = trainer.objective
    t = torch.as_tensor
    got = objective.dataset_losses(t(logits), t(emb), t(labels), t(ce_rows), t(metric_rows))
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits[ce_rows]).double(), torch.tensor(labels[ce_rows]))
    supcon = naive_supcon(emb.astype(np.float64), labels, metric_rows, 0.1)
    assert got["ce_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert got["supcon_loss"] == pytest.approx(supcon, rel=1e-5)
    assert got["loss"] == pytest.approx(got["ce_loss"] + 0.5 * got["supcon_loss"], rel=1e-6)
