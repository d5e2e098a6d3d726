"""Images and audio through the same trainer: tiny random ConvNeXt, ViT, AST, Wav2Vec2 and a ResNet on log-mel
spectrograms built from `model_config` train two steps on generated data, round-trip through save/load, and
agree with the stock pipelines."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from media_fixtures import (
    COLOURS,
    MODALITY,
    TINY_BACKBONES,
    TINY_PROCESSORS,
    TONES,
    media_rows,
    png_bytes,
    wav_bytes,
    write_media_parquet,
)

pytest.importorskip("PIL")
pytest.importorskip("soundfile")

HEAD_TYPES = ["linear", "cosine", "arcface", "subcenter_arcface", "cosface", "circle"]
POOLING = {"convnext": "gem", "vit": "cls", "ast": "pooler", "wav2vec2": "mean", "resnet_spectrogram": "mean"}


def media_config(tmp_path: Path, backbone: str, parquet: Path, **overrides) -> dict:
    cfg = tiny_config(
        "unused",
        parquet,
        tmp_path / "ckpt",
        model={"pooling": POOLING[backbone], "projection_dim": 8},
        scheduler={"num_training_steps": 2},
        training={"batch_size": 6, "samples_per_class": 2, "logging_steps": 1},
        metric_validation={"plots": False},
        data={"max_audio_seconds": 0.5, "val_ratio": 0.3},
    )
    del cfg["model_name"]  # a from-scratch backbone instead
    cfg["model_config"] = TINY_BACKBONES[backbone]
    cfg["processor_config"] = TINY_PROCESSORS[backbone]
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def train_two_steps(tmp_path: Path, backbone: str, **overrides):
    """Build and train a run for two optimizer steps; returns (trainer, prepared data, backbone weights before)."""
    from hf_metric.loading import config_from_dict
    from hf_metric.run import build_run

    parquet = write_media_parquet(tmp_path / "data.parquet", media_rows(MODALITY[backbone], per_class=6))
    cfg = config_from_dict(media_config(tmp_path, backbone, parquet, **overrides))
    trainer, data = build_run(cfg)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.train()
    return trainer, data, before


@pytest.fixture(scope="module", params=sorted(TINY_BACKBONES))
def trained(request, tmp_path_factory):
    """Each backbone trained two steps (with augmentations on) and saved like `train` saves `best/`."""
    backbone = request.param
    tmp_path = tmp_path_factory.mktemp(backbone)
    augment = {"image_augment": {"enabled": True}, "audio_augment": {"enabled": True}}
    trainer, data, before = train_two_steps(tmp_path, backbone, data=augment)
    folder = tmp_path / "best"
    trainer.save_final_model(str(folder))
    return backbone, trainer, data, before, folder


def test_each_backbone_trains_two_steps(trained):
    backbone, trainer, data, before, _ = trained
    assert trainer.state.global_step == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(np.isfinite(losses))
    after = trainer.model.backbone.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert changed, f"{backbone}: two optimizer steps changed no backbone weight"
    assert data.summary["input_column"] == MODALITY[backbone]
    assert trainer.model.config.modality == MODALITY[backbone]


def _batch(data, n: int = 4) -> dict[str, torch.Tensor]:
    rows = data.val[:n]
    return {k: v for k, v in rows.items() if k not in ("labels", "metric_mask", "classifier_mask")}


def test_save_load_round_trip_gives_identical_logits_and_embeddings(trained):
    from transformers import AutoModel, AutoModelForAudioClassification, AutoModelForImageClassification

    backbone, trainer, data, _, folder = trained
    assert (folder / "preprocessor_config.json").is_file()  # the processor is saved beside the model
    model = trainer.model.eval()
    inputs = _batch(data)
    with torch.no_grad():
        want = model(**inputs)
    auto = AutoModelForImageClassification if MODALITY[backbone] == "image" else AutoModelForAudioClassification
    for cls in (AutoModel, auto):
        loaded = cls.from_pretrained(folder).eval()
        with torch.no_grad():
            got = loaded(**inputs)
        assert loaded.backbone.config._attn_implementation == model.backbone.config._attn_implementation
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
        torch.testing.assert_close(got.embeddings, want.embeddings, rtol=0, atol=0)


def test_stock_pipelines_agree_with_the_forward_pass(trained):
    from transformers import AutoModel, pipeline

    backbone, _, _, _, folder = trained
    model = AutoModel.from_pretrained(folder).eval()
    if MODALITY[backbone] == "image":
        from PIL import Image

        pipe = pipeline("image-classification", model=str(folder))
        query = Image.open(io.BytesIO(png_bytes(COLOURS["green"], 99))).convert("RGB")
        result = pipe(query, top_k=None)
        features = pipe.image_processor(images=query, return_tensors="pt")
    else:
        import soundfile

        pipe = pipeline("audio-classification", model=str(folder))
        wave, rate = soundfile.read(io.BytesIO(wav_bytes(TONES["mid"], 99, rate=16000)), dtype="float32")
        result = pipe({"raw": wave, "sampling_rate": rate}, top_k=None)
        features = pipe.feature_extractor(wave, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        probs = model(**features).logits.softmax(-1)[0]
    names = model.config.id2label
    expected = {names[i]: float(p) for i, p in enumerate(probs)}
    assert {r["label"] for r in result} == set(expected)
    for r in result:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-5)


@pytest.mark.parametrize("head_type", [h for h in HEAD_TYPES if h != "linear"])
def test_every_head_trains_on_a_convnext(tmp_path, head_type):
    trainer, _, before = train_two_steps(tmp_path, "convnext", head={"type": head_type})
    assert trainer.state.global_step == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(np.isfinite(losses))
    after = trainer.model.backbone.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if v.is_floating_point())


FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoHfMetric(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_metric":
                raise ImportError("hf_metric is not installed here")

    sys.meta_path.insert(0, NoHfMetric())
    import torch
    from transformers import AutoModelForImageClassification

    folder, pixels = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(pixel_values=pixels)
    print("RESULT" + json.dumps({"logits": out.logits.tolist(), "module": type(model).__module__}))
    """
)


def test_a_saved_image_model_loads_as_remote_code_without_hf_metric(trained):
    backbone, trainer, data, _, folder = trained
    if backbone != "convnext":
        pytest.skip("one backbone is enough: the remote code is the same for all")
    inputs = _batch(data, 2)
    with torch.no_grad():
        want = trainer.model.eval()(**inputs).logits
    env = {**os.environ, "HF_MODULES_CACHE": str(folder.parent / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), json.dumps(inputs["pixel_values"].tolist())],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder.parent,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["module"].startswith("transformers_modules.")
    assert torch.allclose(torch.tensor(out["logits"]), want, atol=1e-5)


def _queries(backbone: str) -> list:
    if MODALITY[backbone] == "image":
        return [png_bytes(colour, 50 + i) for i, colour in enumerate(COLOURS.values())]
    return [wav_bytes(freq, 50 + i, rate=8000) for i, freq in enumerate(TONES.values())]  # resampled to 16 kHz


def test_embedding_and_knn_pipelines_take_images_and_clips(trained):
    """`metric-embedding` gives the forward pass's embeddings (processor saved beside the model, inputs as
    encoded bytes); `knn-classification` fitted on a reference votes as `knn_predict` on those embeddings."""
    from transformers import AutoModel, pipeline

    from hf_metric.data.media import as_clip, as_image
    from hf_metric.evaluation.metrics import knn_predict

    backbone, _, _, _, folder = trained
    model = AutoModel.from_pretrained(folder).eval()
    queries = _queries(backbone)
    embedder = pipeline("metric-embedding", model=str(folder))
    if MODALITY[backbone] == "image":
        features = embedder.image_processor(images=[as_image(q) for q in queries], return_tensors="pt")
    else:
        rate = embedder.feature_extractor.sampling_rate
        clips = [as_clip(q, rate) for q in queries]
        features = embedder.feature_extractor(clips, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        want = model(**features).embeddings
    one = torch.tensor(embedder(queries[0]))
    torch.testing.assert_close(one, want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embedder.embed(queries, batch_size=2), want, atol=1e-5, rtol=1e-5)

    rows = media_rows(MODALITY[backbone], per_class=2, seed=9)
    items, labels = [r[MODALITY[backbone]] for r in rows], [r["label"] for r in rows]
    knn = pipeline("knn-classification", model=str(folder)).fit(items, labels)
    got = knn(queries[1], k=3)
    expected, share = knn_predict(want[1:2], embedder.embed(items), np.asarray(labels), 3, "cos")
    assert got["label"] == expected[0] and got["score"] == pytest.approx(float(share[0]))


def test_predict_and_embed_take_images_and_clips(trained, tmp_path):
    """`hf-metric predict` / `embed` on a Parquet file of encoded images or clips: every input column kept, the
    head's label and the embedding equal the stock `metric-embedding` pipeline's forward pass on the same bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoModel, pipeline

    from hf_metric.commands import main as hf_metric

    backbone, _, _, _, folder = trained
    column = MODALITY[backbone]
    queries = _queries(backbone)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(queries))), column: queries}), source)
    out, emb = tmp_path / "out.parquet", tmp_path / "emb.npy"
    settings = []
    if column == "audio":  # clips are cut/padded to max_audio_seconds; at their own length the pipeline agrees
        import soundfile

        settings = ["--set", f"data.max_audio_seconds={soundfile.info(io.BytesIO(queries[0])).duration}"]
    run = ["--model", str(folder), "--data", str(source), *settings]
    assert hf_metric(["predict", *run, "--out", str(out)]) == 0
    assert hf_metric(["embed", *run, "--out", str(emb)]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["id"] == list(range(len(queries))) and table[column] == queries
    embedder = pipeline("metric-embedding", model=str(folder))
    want = embedder.embed(queries, batch_size=2).numpy()
    np.testing.assert_allclose(np.load(emb), want, atol=1e-5)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = [model(**embedder.preprocess(q)).logits[0] for q in queries]  # no stored rows: the head alone
    assert table["head_label"] == [model.config.id2label[int(x.argmax())] for x in logits]


def test_evaluate_scores_an_image_or_audio_file_like_predict(trained, tmp_path):
    """`hf-metric evaluate` on a labelled image/audio file: its head accuracy equals the share of rows whose
    `head_label` from `hf-metric predict` (on the same file) is the true label."""
    import json

    import pyarrow.parquet as pq

    from hf_metric.commands import main as hf_metric

    backbone, _, _, _, folder = trained
    labelled = write_media_parquet(tmp_path / "test.parquet", media_rows(MODALITY[backbone], per_class=3, seed=7))
    settings = []
    if MODALITY[backbone] == "audio":
        import soundfile

        first = pq.read_table(labelled).column("audio")[0].as_py()
        settings = ["--set", f"data.max_audio_seconds={soundfile.info(io.BytesIO(first)).duration}"]
    run = ["--model", str(folder), "--data", str(labelled), *settings]
    assert hf_metric(["evaluate", *run, "--out", str(tmp_path / "eval")]) == 0
    assert hf_metric(["predict", *run, "--out", str(tmp_path / "pred.parquet")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    table = pq.read_table(tmp_path / "pred.parquet").to_pydict()
    share = sum(h == y for h, y in zip(table["head_label"], table["label"], strict=True)) / len(table["label"])
    assert metrics["head_accuracy"] == pytest.approx(share)


def test_a_vision_backbone_sees_the_log_mel_spectrogram_as_a_one_channel_image():
    """Audio features `(batch, frames, mel_bins)` reach a CNN as `(batch, 1, mel_bins, frames)`: checked element by
    element against the features, and the model's output against the backbone fed that image by hand."""
    from hf_metric.data.featurize_media import build_processor
    from hf_metric.model.modeling import MetricClassifierModel, spectrogram_as_image

    processor = build_processor("audio", None, "resnet", TINY_PROCESSORS["resnet_spectrogram"])
    assert type(processor).__name__ == "ASTFeatureExtractor" and processor.num_mel_bins == 16
    clips = [np.sin(np.linspace(0, 400 * (i + 1), 16000)).astype(np.float32) for i in range(2)]
    values = torch.from_numpy(processor(clips, sampling_rate=16000, return_tensors="np")["input_values"])
    image = spectrogram_as_image({"input_values": values}, "pixel_values")["pixel_values"]
    assert image.shape == (2, 1, 16, 32)
    for b, t, f in [(0, 0, 0), (1, 5, 3), (0, 31, 15), (1, 17, 9)]:
        assert image[b, 0, f, t] == values[b, t, f]
    assert spectrogram_as_image({"input_values": values}, "input_values")["input_values"] is values  # AST: as is
    model = MetricClassifierModel.from_scratch(TINY_BACKBONES["resnet_spectrogram"], {0: "a", 1: "b"}).eval()
    with torch.no_grad():
        want = model.backbone(pixel_values=values.permute(0, 2, 1)[:, None]).last_hidden_state.mean(dim=(2, 3))
        torch.testing.assert_close(model._encode({"input_values": values}, None), want)


def test_an_audio_extractor_missing_for_a_vision_backbone_says_how_to_name_one():
    from hf_metric.data.featurize_media import build_processor
    from hf_metric.errors import ConfigError

    with pytest.raises(ConfigError, match="feature_extractor_type: ASTFeatureExtractor"):
        build_processor("audio", None, "resnet", {})


def test_the_audio_quickstart_config_builds_its_extractor_and_cnn():
    """configs/quickstart_audio.yaml as shipped: AST log-mel front end (64 bins x 100 frames) into a one-channel
    ResNet; one clip of the shipped subset gives finite logits for its 20 words."""
    import pyarrow.parquet as pq

    from hf_metric.data.featurize_media import build_processor
    from hf_metric.data.media import decode_audio, fit_length
    from hf_metric.loading import load_config
    from hf_metric.model.modeling import MetricClassifierModel

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "quickstart_audio.yaml")
    processor = build_processor("audio", None, cfg.model_config["model_type"], cfg.processor_config)
    assert type(processor).__name__ == "ASTFeatureExtractor"
    table = pq.read_table(root / cfg.data.parquet_path).slice(0, 2).to_pylist()
    clips = [fit_length(decode_audio({"bytes": r["audio"], "path": None}, rate=16000), 16000, 0) for r in table]
    values = torch.from_numpy(processor(clips, sampling_rate=16000, return_tensors="np")["input_values"])
    assert values.shape == (2, 100, 64) and values.std() > 0.1  # not a constant input
    model = MetricClassifierModel.from_scratch(cfg.model_config, {i: str(i) for i in range(20)}, pooling="mean")
    with torch.no_grad():
        logits = model.eval()(input_values=values).logits
    assert logits.shape == (2, 20) and torch.isfinite(logits).all()
