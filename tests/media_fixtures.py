"""Generated images and clips for the image/audio tests: each class is easy to tell apart (a colour, a tone)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TONES = {"low": 220.0, "mid": 660.0, "high": 1760.0}

TINY_BACKBONES = {
    "convnext": {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
    "vit": {
        "model_type": "vit",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "image_size": 32,
        "patch_size": 8,
    },
    "ast": {
        "model_type": "audio-spectrogram-transformer",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "num_mel_bins": 16,
        "max_length": 32,
        "frequency_stride": 4,
        "time_stride": 4,
        "patch_size": 8,
    },
    "wav2vec2": {
        "model_type": "wav2vec2",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "conv_dim": [8, 8],
        "conv_kernel": [10, 3],
        "conv_stride": [5, 2],
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2,
        "mask_time_prob": 0.0,
    },
    "resnet_spectrogram": {  # a vision CNN on log-mel spectrograms (the audio quickstart's recipe)
        "model_type": "resnet",
        "num_channels": 1,
        "embedding_size": 8,
        "hidden_sizes": [8, 16],
        "depths": [1, 1],
        "layer_type": "basic",
    },
}
"""Tiny random configs (`model_config`), one per backbone family the issue names."""

TINY_PROCESSORS = {
    "convnext": {"size": {"shortest_edge": 32}},
    "vit": {"size": {"height": 32, "width": 32}},
    "ast": {"num_mel_bins": 16, "max_length": 32},
    "wav2vec2": {},
    "resnet_spectrogram": {"feature_extractor_type": "ASTFeatureExtractor", "num_mel_bins": 16, "max_length": 32},
}
MODALITY = {"convnext": "image", "vit": "image", "ast": "audio", "wav2vec2": "audio", "resnet_spectrogram": "audio"}


def png_bytes(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (40, 36)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(freq: float, seed: int, rate: int = 8000, seconds: float = 0.5, fmt: str = "WAV") -> bytes:
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6)) + rng.normal(0, 0.02, len(t))
    buf = io.BytesIO()
    soundfile.write(buf, wave.astype(np.float32), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def media_rows(modality: str, per_class: int = 8, seed: int = 0) -> list[dict]:
    rows = []
    for c, (label, value) in enumerate((COLOURS if modality == "image" else TONES).items()):
        for i in range(per_class):
            s = seed * 1000 + c * 100 + i
            data = png_bytes(value, s) if modality == "image" else wav_bytes(value, s)
            rows.append({modality: data, "label": label})
    return rows


def write_media_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
