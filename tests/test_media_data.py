"""Image and audio columns: every storage form, header checks, bad rows (error or skipped and counted), lazy
decoding, resampling and cutting, the config keys, and the error that names the missing extra."""

from __future__ import annotations

import io
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media_fixtures import TINY_PROCESSORS, media_rows, png_bytes, wav_bytes, write_media_parquet

from hf_metric.config import DataSection
from hf_metric.data.parquet import read_labeled_parquet
from hf_metric.errors import ConfigError, DataError
from hf_metric.loading import config_from_dict

pytest.importorskip("PIL")
pytest.importorskip("soundfile")


def _pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_bytes_relative_paths_and_datasets_structs_decode_to_the_same_image(tmp_path):
    from hf_metric.data.media import decode_image

    images = [png_bytes((200, 10, 10), i) for i in range(3)]
    (tmp_path / "img").mkdir()
    for i, data in enumerate(images):
        (tmp_path / "img" / f"{i}.png").write_bytes(data)
    forms = {
        "bytes": images,
        "paths": [f"img/{i}.png" for i in range(3)],
        "structs": [{"bytes": d, "path": None} for d in images],
        "struct_paths": [{"bytes": None, "path": f"img/{i}.png"} for i in range(3)],
    }
    for name, cells in forms.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"image": cells, "label": ["a", "b", "a"]}), path)
        table = read_labeled_parquet(path).table
        assert table.column_names[0] == "image" and table.column("source_row").to_pylist() == [0, 1, 2]
        for i, cell in enumerate(table.column("image").to_pylist()):
            np.testing.assert_array_equal(np.asarray(decode_image(cell)), _pixels(images[i]), err_msg=name)


@pytest.mark.parametrize(
    ("column", "cells", "row", "message"),
    [
        ("image", lambda: [png_bytes((1, 2, 3), 0), b"not a png", png_bytes((1, 2, 3), 1)], 1, "cannot read the image"),
        ("image", lambda: [png_bytes((1, 2, 3), 0), png_bytes((1, 2, 3), 1), None], 2, "no bytes and no path"),
        ("image", lambda: ["missing.png", "ok.png", "ok.png"], 0, "file not found: .*missing.png"),
        ("audio", lambda: [wav_bytes(440, 0), wav_bytes(440, 1), b"RIFF...."], 2, "cannot read the audio"),
    ],
)
def test_an_unreadable_row_is_a_one_line_error_or_skipped_and_counted(tmp_path, column, cells, row, message):
    from hf_metric.data.prepare import prepare_datasets

    cells = cells()
    (tmp_path / "ok.png").write_bytes(png_bytes((1, 2, 3), 0))
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({column: cells, "label": ["a", "b", "a"]}), path)
    with pytest.raises(DataError, match=rf"column '{column}', row {row}: .*{message}") as info:
        read_labeled_parquet(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text and "skip_bad_rows" in text and "<_io" not in text

    labeled = read_labeled_parquet(path, skip_bad_rows=True)
    assert labeled.bad_rows == 1
    assert labeled.table.column("source_row").to_pylist() == [i for i in range(3) if i != row]
    # the count reaches the data summary that is logged and written into the report and model card
    featurizer = types.SimpleNamespace(input_column=column, prepare=lambda ds, train: ds)
    data = DataSection(parquet_path=str(path), val_ratio=0.5, skip_bad_rows=True)
    assert prepare_datasets(data, featurizer, seed=0).summary["rows_skipped_unreadable"] == 1


def test_a_row_that_fails_at_decoding_names_file_column_and_row(tmp_path):
    """Decoding errors in the lazy transform (a file changed after the check, a codec the header check missed)
    still name the file, the column and the row of the Parquet file."""
    import datasets

    from hf_metric.data.featurize_media import ImageFeaturizer, build_processor
    from hf_metric.data.media import MEDIA_TYPE

    cells = [{"bytes": png_bytes((10, 200, 10), 0), "path": None}, {"bytes": b"broken", "path": None}]
    table = pa.table({"image": pa.array(cells, MEDIA_TYPE), "labels": [0, 0], "source_row": [3, 7]})
    featurizer = ImageFeaturizer(build_processor("image", None, "convnext", TINY_PROCESSORS["convnext"]))
    featurizer.source = "data.parquet"
    dataset = featurizer.prepare(datasets.Dataset(table), train=False)
    assert dataset[0]["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"^data.parquet: column 'image', row 7: cannot decode the image: unknown"):
        dataset[1]


def test_several_or_no_input_columns_are_refused(tmp_path):
    both = tmp_path / "both.parquet"
    pq.write_table(pa.table({"image": [png_bytes((1, 1, 1), 0)], "text": ["x"], "label": ["a"]}), both)
    with pytest.raises(DataError, match="several input columns; keep exactly one"):
        read_labeled_parquet(both)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"image": [1, 2], "label": ["a", "b"]}), wrong)
    with pytest.raises(DataError, match="column 'image' must hold encoded bytes, a file path or a"):
        read_labeled_parquet(wrong)


def test_decoding_is_lazy(tmp_path, monkeypatch):
    """Preparing a dataset decodes nothing; each access decodes only the rows it asks for."""
    from hf_metric.data import featurize_media
    from hf_metric.data.featurize_media import ImageFeaturizer, build_processor

    calls = []
    real = featurize_media.decode_image
    monkeypatch.setattr(featurize_media, "decode_image", lambda cell: calls.append(1) or real(cell))
    path = write_media_parquet(tmp_path / "x.parquet", media_rows("image", per_class=4))
    import datasets

    featurizer = ImageFeaturizer(build_processor("image", None, "vit", TINY_PROCESSORS["vit"]))
    dataset = featurizer.prepare(datasets.Dataset(read_labeled_parquet(path).table), train=False)
    assert calls == [] and len(dataset) == 12
    assert dataset[:3]["pixel_values"].shape == (3, 3, 32, 32)
    assert len(calls) == 3
    from hf_metric.data.prepare import labels_of

    np.testing.assert_array_equal(labels_of(dataset), read_labeled_parquet(path).labels)  # the samplers' labels
    assert len(calls) == 3  # ... are read without decoding a single image


def test_audio_is_resampled_to_the_extractor_rate_and_cut_or_padded(tmp_path):
    from hf_metric.data.featurize_media import AudioFeaturizer, build_processor
    from hf_metric.data.media import decode_audio

    clip = wav_bytes(440.0, 0, rate=8000, seconds=0.5)
    samples = decode_audio({"bytes": clip, "path": None}, rate=16000)
    assert len(samples) == 8000  # 0.5 s at 16 kHz
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(len(samples), 1 / 16000)[spectrum.argmax()] == pytest.approx(440.0, abs=2.0)

    featurizer = AudioFeaturizer(build_processor("audio", None, "wav2vec2", {}), max_audio_seconds=0.25)
    assert featurizer.clip(samples, augmented=False).shape == (4000,)
    np.testing.assert_array_equal(featurizer.clip(samples, augmented=False), samples[:4000])
    longer = AudioFeaturizer(featurizer.processor, max_audio_seconds=1.0).clip(samples, augmented=False)
    assert longer.shape == (16000,) and not longer[8000:].any()
    np.testing.assert_array_equal(longer[:8000], samples)


def test_stereo_is_averaged_to_mono():
    import soundfile

    from hf_metric.data.media import decode_audio

    left = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, np.stack([left, np.zeros_like(left)], axis=1), 16000, format="FLAC", subtype="PCM_24")
    mono = decode_audio({"bytes": buf.getvalue(), "path": None}, rate=16000)
    np.testing.assert_allclose(mono, left / 2, atol=1e-6)


def test_a_text_only_install_names_the_extra_to_add(tmp_path, monkeypatch):
    from hf_metric import optional

    path = write_media_parquet(tmp_path / "x.parquet", media_rows("audio", per_class=2))
    monkeypatch.setattr(optional, "available", lambda module: module != "soundfile")
    with pytest.raises(ConfigError, match=r'needs `soundfile`: pip install "hf_metric\[audio\]"'):
        read_labeled_parquet(path)


def test_config_keys_for_media(tmp_path):
    base = {"data": {"parquet_path": "x.parquet"}}
    cfg = config_from_dict({**base, "model_config": {"model_type": "vit", "hidden_size": 16}})
    assert cfg.model_config == {"model_type": "vit", "hidden_size": 16} and not cfg.data.image_augment.enabled
    with pytest.raises(ConfigError, match="model_config: needs a model_type"):
        config_from_dict({**base, "model_config": {"hidden_size": 16}})
    with pytest.raises(ConfigError, match="model_config: expected a mapping"):
        config_from_dict({**base, "model_config": "vit"})
    with pytest.raises(ConfigError, match=r"data.image_augment.crop_scale: must be \[min, max\]"):
        config_from_dict({"data": {"parquet_path": "x", "image_augment": {"crop_scale": [0.9, 0.5]}}})
    with pytest.raises(ConfigError, match=r"data\.audio_augment\.gain_db"):
        config_from_dict({"data": {"parquet_path": "x", "audio_augment": {"gain_db": -1}}})
    with pytest.raises(ConfigError, match=r"did you mean data\.skip_bad_rows"):
        config_from_dict({"data": {"parquet_path": "x", "skip_bad_row": True}})


def test_unknown_from_scratch_model_type_has_no_processor():
    from hf_metric.data.featurize_media import build_processor

    with pytest.raises(ConfigError, match="no audio feature extractor for 'bert'"):
        build_processor("audio", None, "bert", {})


@pytest.mark.parametrize(("column", "task"), [("image", "image-classification"), ("audio", "audio-classification")])
def test_the_model_card_states_the_modality_and_from_scratch(column, task):
    from hf_metric.sharing.hub import build_model_card

    cfg = config_from_dict({"data": {"parquet_path": "x.parquet"}, "model_config": {"model_type": "convnext"}})
    card = build_model_card(cfg, {"eval_f1": 0.5}, {"input_column": column}, {}, {0: "a", 1: "b"})
    assert card.data.pipeline_tag == task and f"{column}-embeddings" in card.data.tags
    assert card.data.base_model is None  # a from-scratch backbone has no Hub base model
    assert f"{column} classifier" in card.text and "trained from scratch" in card.text
    assert f'pipeline("{task}"' in card.text
    text_card = build_model_card(config_from_dict({"data": {"parquet_path": "x"}}), {}, {}, {}, {0: "a"})
    assert text_card.data.pipeline_tag == "text-classification" and "A text classifier" in text_card.text
