"""The model card: files computed from the folder, how predictions are made, stored training rows disclosed,
Hub metadata from the `hub` section, and no local paths."""

from __future__ import annotations

import json

from conftest import synthetic_rows, tiny_config, write_parquet
from huggingface_hub import ModelCard
from test_inference_cli import save_tiny_model

from hf_metric.cli import main
from hf_metric.loading import config_from_dict
from hf_metric.sharing.head_io import export_head
from hf_metric.sharing.hub import build_model_card


def card_for(folder, cfg, tmp_path):
    summary = {"source": str(tmp_path / "secret" / "train.parquet"), "train_rows": 24}
    return build_model_card(cfg, {"eval_f1": 0.5}, summary, {"loss": 1.0}, {0: "a"}, folder=str(folder))


def test_card_lists_the_folders_files_and_the_stored_rows(tiny_model_dir, tmp_path):
    folder = tmp_path / "best"
    save_tiny_model(tiny_model_dir, folder, fusion=0.25)
    export_head(folder)
    (folder / "my_extra_module.py").write_text("X = 1\n")
    raw = tiny_config(tiny_model_dir, tmp_path / "secret" / "train.parquet", tmp_path / "ckpt")
    raw["hub"] = {"license": "mit", "datasets": ["org/tickets"], "language": ["en", "ru"], "base_model": "org/bert"}
    card = card_for(folder, config_from_dict(raw), tmp_path)
    text = str(card)
    for name in [p.name for p in folder.iterdir()] + ["README.md"]:
        assert f"- `{name}`" in text
    for code in sorted(p.name for p in folder.glob("*.py")):
        assert f"`{code}`: remote code" in text
    assert "my_extra_module.py" in text.split("## How to load it")[1]  # the remote-code list too
    assert "(1 - 0.25) * softmax(head) + 0.25 * p_knn" in text and "vote of the 5 nearest of the 24" in text
    assert "## Training data stored in this model" in text and "**24 training rows**" in text
    assert str(tmp_path) not in text and tiny_model_dir not in text and "train.parquet" in text
    assert "encoder `tiny_bert" in text
    data = ModelCard(text).data
    assert (data.license, data.datasets, data.language, data.base_model) == (
        "mit",
        ["org/tickets"],
        ["en", "ru"],
        "org/bert",
    )
    assert data.pipeline_tag == "text-classification"


def test_card_of_a_model_without_stored_rows(tiny_model_dir, tmp_path):
    folder = tmp_path / "best"
    save_tiny_model(tiny_model_dir, folder, fusion=0.0, reference=False)
    cfg = config_from_dict(tiny_config(tiny_model_dir, tmp_path / "t.parquet", tmp_path / "ckpt"))
    text = str(card_for(folder, cfg, tmp_path))
    assert "Training data stored in this model" not in text
    assert "head on the `mean`-pooled encoder output alone (no kNN fusion)" in text
    assert ModelCard(text).data.license is None and ModelCard(text).data.base_model is None  # local backbone


def test_store_knn_reference_false_drops_the_rows_and_the_fusion(tmp_path, make_config):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(8, seed=4))
    config = make_config(
        data, training={"num_epochs": 1}, model={"knn_fusion_weight": 0.3, "store_knn_reference": False}
    )
    assert main(["--config", str(config)]) == 0
    best = tmp_path / "ckpt" / "best"
    assert json.loads((best / "config.json").read_text())["knn_reference_size"] == 0
    text = (best / "README.md").read_text()
    assert "Training data stored in this model" not in text and "no kNN fusion" in text


def test_train_then_evaluate_then_push_from_the_command_line(tmp_path, make_config, monkeypatch, capsys):
    from unittest import mock

    from huggingface_hub import HfApi

    from hf_metric.cli import app

    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(8, seed=4))
    config = make_config(data, training={"num_epochs": 1}, model={"knn_fusion_weight": 0.3})
    assert app(["train", "--config", str(config), "--set", "metric_validation.recall_at_k=[1, 2]"]) == 0
    best = tmp_path / "ckpt" / "best"
    text = (best / "README.md").read_text()
    assert "## Training data stored in this model" in text and "0.3 * p_knn" in text
    test = write_parquet(tmp_path / "test.parquet", synthetic_rows(3, seed=8, classes=["card", "account"]))
    out = tmp_path / "eval"
    assert app(["evaluate", "--model", str(best), "--data", str(test), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {"head_accuracy", "fused_accuracy", "knn_vote_accuracy", "recall@2", "knn_accuracy"} <= set(metrics)
    assert "recall@5" not in metrics  # the run's resolved_config.yaml (recall_at_k [1, 2]) was used

    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **k: mock.Mock(repo_id=repo_id))
    monkeypatch.setattr(
        HfApi, "create_commit", lambda api, repo_id, **k: commits.append(k) or mock.Mock(commit_url="https://x/1")
    )
    assert app(["push", "--model", str(best), "--model-id", "me/tiny", "--set", "hub.commit_message=again"]) == 0
    assert commits[0]["commit_message"] == "again" and "Pushed" in capsys.readouterr().out
    assert "training_args.bin" not in {op.path_in_repo for op in commits[0]["operations"]}


def test_card_states_the_open_set_rule_and_the_oos_training(tiny_model_dir, tmp_path):
    from hf_metric.model.modeling import MetricClassifierModel

    folder = tmp_path / "best"
    save_tiny_model(tiny_model_dir, folder)
    raw = tiny_config(tiny_model_dir, tmp_path / "t.parquet", tmp_path / "ckpt")
    raw["data"]["out_of_scope_label"] = "other"
    raw["open_set"] = {"enabled": True, "criterion": "accuracy_drop", "train_with_oos": True}
    raw["open_set"]["outlier_exposure_weight"] = 0.5
    cfg = config_from_dict(raw)
    plain = str(card_for(folder, cfg, tmp_path))
    assert "Out-of-scope rejection" not in plain  # no threshold stored: no rule on the card
    model = MetricClassifierModel.from_pretrained(folder)
    model.config.out_of_scope_label = "other"
    model.set_open_set("knn", 0.123456789)
    model.save_pretrained(folder)
    metrics = {"eval_f1": 0.5, "eval_open_set_in_scope_accuracy": 0.91, "eval_open_set_oos_recall": 0.8}
    text = str(build_model_card(cfg, metrics, {"train_rows": 24}, {"loss": 1.0}, {0: "a"}, folder=str(folder)))
    line = next(ln for ln in text.splitlines() if "Out-of-scope rejection" in ln)
    assert "`knn` score" in line and "**0.123457**" in line and "`other`" in line and "`accuracy_drop`" in line
    assert "in scope accuracy 0.9100, oos recall 0.8000" in line
    assert "known out-of-scope rows (`other`) trained as negatives" in text
    assert "`+ 0.5 * CE(uniform, softmax)`" in text


def test_card_states_how_the_rule_was_chosen(tiny_model_dir, tmp_path):
    import numpy as np

    from hf_metric.model.modeling import MetricClassifierModel
    from hf_metric.open_set.calibration import calibrate

    folder = tmp_path / "best"
    save_tiny_model(tiny_model_dir, folder)
    cfg = config_from_dict(tiny_config(tiny_model_dir, tmp_path / "t.parquet", tmp_path / "ckpt"))
    scores = {"knn": np.linspace(0, 1, 40, dtype=np.float32)}
    labels = np.array([0] * 30 + [-1] * 10)
    logits = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (40, 1))
    chosen = calibrate(scores, logits, labels, "knn", "auto")
    model = MetricClassifierModel.from_pretrained(folder)
    model.set_open_set("knn", chosen.threshold)
    model.config.open_set_calibration = chosen.summary()
    model.save_pretrained(folder)
    text = str(build_model_card(cfg, {}, {"train_rows": 24}, {"loss": 1.0}, {0: "a"}, folder=str(folder)))
    line = next(ln for ln in text.splitlines() if "Out-of-scope rejection" in ln)
    assert "`in_scope_recall` target `0.95`, 30 in-scope and 10 out-of-scope rows" in line
    assert "Why: only 10 out-of-scope rows (< 100)" in line
