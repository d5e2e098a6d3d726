"""The model card: files computed from the folder, how predictions are made, stored training rows disclosed,
Hub metadata from the `hub` section, and no local paths."""

from __future__ import annotations

import json

from conftest import synthetic_rows, tiny_config, write_parquet
from huggingface_hub import ModelCard
from test_inference_cli import save_tiny_model

from hf_metric.cli import main
from hf_metric.config import config_from_dict
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
