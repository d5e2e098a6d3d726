"""ONNX export of image and audio models: `hf-metric export` on tiny from-scratch backbones, then `predict` and
`embed` with `--backend onnx` give the torch backend's top-1 and embeddings (within 1e-4), without the export
folder needing the training config (the featurizer settings travel in `hf_metric_export.json`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from media_fixtures import MODALITY, TINY_BACKBONES, TINY_PROCESSORS, media_rows, write_media_parquet

from hf_metric.cli import app

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("PIL")
pytest.importorskip("soundfile")

POOLING = {"convnext": "gem", "vit": "cls", "ast": "pooler", "wav2vec2": "mean", "resnet_spectrogram": "mean"}
CLIP_SECONDS = 0.5
"""The generated clips' length: the run's `max_audio_seconds` (a setting the export must carry to serving)."""


def save_media_model(backbone: str, folder: Path, data: Path) -> Path:
    """A tiny random model of `backbone` with its processor and, as stored kNN rows, its own embeddings of
    `data` (kNN fusion on), saved like `train` saves `best/`."""
    from hf_metric.data.featurize import FeaturizerSettings, featurizer_for
    from hf_metric.data.featurize_media import build_processor
    from hf_metric.model.modeling import MetricClassifierModel

    column = MODALITY[backbone]
    labels = sorted({r["label"] for r in media_rows(column, per_class=1)})
    torch.manual_seed(0)
    model = MetricClassifierModel.from_scratch(
        TINY_BACKBONES[backbone],
        dict(enumerate(labels)),
        pooling=POOLING[backbone],
        projection_dim=8,
        knn_fusion_weight=0.3,
        knn_fusion_k=3,
    ).eval()
    processor = build_processor(column, None, TINY_BACKBONES[backbone]["model_type"], TINY_PROCESSORS[backbone])
    processor.save_pretrained(folder)
    settings = FeaturizerSettings(data=type("Data", (), {"max_audio_seconds": CLIP_SECONDS})())
    featurizer = featurizer_for(str(folder), column, settings=settings)
    table = pq.read_table(data).to_pylist()
    with torch.no_grad():
        cells = [{"bytes": r[column], "path": None} for r in table]
        emb = model(**featurizer.encode(cells, return_tensors="pt")).embeddings
    model.set_knn_reference(emb, torch.tensor([labels.index(r["label"]) for r in table]))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_image_and_audio_exports_serve_the_torch_backends_predictions(backbone, tmp_path, capsys):
    column = MODALITY[backbone]
    train = write_media_parquet(tmp_path / "train.parquet", media_rows(column, per_class=3, seed=1))
    test = write_media_parquet(tmp_path / "test.parquet", media_rows(column, per_class=3, seed=2))
    model = str(save_media_model(backbone, tmp_path / "best", train))
    audio = ["--set", f"data.max_audio_seconds={CLIP_SECONDS}"] if column == "audio" else []
    onnx = str(tmp_path / "onnx")
    assert app(["export", "--model", model, "--data", str(test), "--out", onnx, *audio]) == 0
    assert "parity knn_probabilities" in capsys.readouterr().out
    info = json.loads((tmp_path / "onnx" / "hf_metric_export.json").read_text())
    assert info["featurizer"]["input_column"] == column
    assert info["inputs"] == (["pixel_values"] if column == "image" else ["input_values"])

    common = ["--data", str(test), "--no-progress"]
    outputs = {}
    for name, args in (("torch", ["--model", model, *audio]), ("onnx", ["--model", onnx, "--backend", "onnx"])):
        assert app(["predict", *args, *common, "--out", str(tmp_path / f"{name}.parquet")]) == 0
        assert app(["embed", *args, *common, "--out", str(tmp_path / f"{name}.npy")]) == 0
        outputs[name] = pq.read_table(tmp_path / f"{name}.parquet").to_pydict(), np.load(tmp_path / f"{name}.npy")
    (a, emb_a), (b, emb_b) = outputs["torch"], outputs["onnx"]
    for key in ("predicted_label", "head_label", "knn_label", "top_labels"):
        assert a[key] == b[key], key
    np.testing.assert_allclose(b["score"], a["score"], atol=1e-4)
    np.testing.assert_allclose(emb_b, emb_a, atol=1e-4)
    assert np.abs(emb_a).sum() > 0 and len(emb_a) == 9


def test_an_image_model_without_data_is_told_to_give_rows(tmp_path, capsys):
    train = write_media_parquet(tmp_path / "train.parquet", media_rows("image", per_class=1))
    model = str(save_media_model("convnext", tmp_path / "best", train))
    assert app(["export", "--model", model, "--out", str(tmp_path / "onnx")]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_a_text_export_is_served_with_the_token_limit_it_was_checked_with(tiny_model_dir, tmp_path):
    """`--set training.max_seq_length=5` at export: serving the folder cuts texts at 5 tokens too (the long
    texts below then get other embeddings than at the default limit)."""
    from conftest import synthetic_rows, write_parquet
    from test_inference_cli import save_tiny_model

    model = save_tiny_model(tiny_model_dir, tmp_path / "best")
    data = write_parquet(tmp_path / "in.parquet", synthetic_rows(per_class=3, seed=4))
    short = ["--set", "training.max_seq_length=5"]
    assert app(["export", "--model", model, "--out", str(tmp_path / "onnx"), *short]) == 0
    info = json.loads((tmp_path / "onnx" / "hf_metric_export.json").read_text())
    assert info["featurizer"] == {"input_column": "text", "max_seq_length": 5}
    common = ["--data", str(data), "--no-progress"]
    assert app(["embed", "--model", model, *common, *short, "--out", str(tmp_path / "t5.npy")]) == 0
    assert app(["embed", "--model", model, *common, "--out", str(tmp_path / "t.npy")]) == 0
    assert (
        app(
            ["embed", "--model", str(tmp_path / "onnx"), "--backend", "onnx", *common, "--out", str(tmp_path / "o.npy")]
        )
        == 0
    )
    got, want, full = (np.load(tmp_path / f) for f in ("o.npy", "t5.npy", "t.npy"))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - full).max() > 1e-3
