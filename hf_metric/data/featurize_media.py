"""Image and audio featurizers: cells decoded per batch (`datasets.Dataset.with_transform`), never up front.

`ImageFeaturizer` uses the backbone's `AutoImageProcessor`, `AudioFeaturizer` its `AutoFeatureExtractor`
(resampling to its rate, cutting or padding to `data.max_audio_seconds`). A from-scratch backbone
(`model_config`) has no saved processor: `build_processor` makes the default one of its `model_type`, with
`processor_config` as arguments; a vision backbone trained on audio (a CNN on log-mel spectrograms, the usual
recipe for sound classification from scratch) names its extractor there: `feature_extractor_type`.
Augmentations (`hf_metric.data.augment`) run on the train split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import augment
from .media import AUDIO_COLUMN, IMAGE_COLUMN, SOURCE_ROW, decode_audio, decode_image, fit_length, require_backend


def build_processor(column: str, model_path: str | None, model_type: str | None, overrides: dict | None) -> Any:
    """The backbone's image processor / feature extractor: loaded from `model_path`, else the default one of
    `model_type` (from-scratch backbones), each with `overrides` as keyword arguments."""
    overrides = dict(overrides or {})
    if model_path is not None:
        from transformers import AutoFeatureExtractor, AutoImageProcessor

        auto = AutoImageProcessor if column == IMAGE_COLUMN else AutoFeatureExtractor
        return auto.from_pretrained(model_path, **overrides)
    if column == IMAGE_COLUMN:
        from transformers.models.auto.image_processing_auto import (
            IMAGE_PROCESSOR_MAPPING_NAMES,
            get_image_processor_class_from_name,
        )

        from ..optional import available

        names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
        if isinstance(names, dict):  # transformers 5: {"pil": ..., "torchvision": ...}
            names = names.get("torchvision") if available("torchvision") else names.get("pil")
        elif isinstance(names, tuple):
            names = next((n for n in names if n), None)
        find = get_image_processor_class_from_name
    else:
        from transformers.models.auto.feature_extraction_auto import (
            FEATURE_EXTRACTOR_MAPPING_NAMES,
            feature_extractor_class_from_name,
        )

        # A vision backbone on log-mel spectrograms names its extractor: {feature_extractor_type: ASTFeatureExtractor}
        chosen = overrides.pop("feature_extractor_type", None)
        names, find = chosen or FEATURE_EXTRACTOR_MAPPING_NAMES.get(model_type), feature_extractor_class_from_name
    if not names or find(names) is None:
        kind = "image processor" if column == IMAGE_COLUMN else "audio feature extractor"
        hint = ""
        if column != IMAGE_COLUMN:
            hint = " (a vision backbone on spectrograms: processor_config.feature_extractor_type: ASTFeatureExtractor)"
        raise ConfigError(f"model_config.model_type: transformers has no {kind} for {names or model_type!r}{hint}")
    try:
        return find(names)(**overrides)
    except TypeError as err:
        raise ConfigError(f"processor_config: {err}") from None


class MediaFeaturizer:
    """Shared by image and audio: a lazy `with_transform` that decodes the input column of each batch, keeps
    labels and masks, and names file, column and row when a cell cannot be decoded."""

    input_column = ""
    source = ""
    """The Parquet file (set by `prepare_datasets`), for error messages."""
    locate: Any = None
    """`row -> (file, row in it)` for sharded data (set by `prepare_datasets`), or None."""

    def __init__(self, processor: Any, augment_cfg: Any = None) -> None:
        require_backend(self.input_column)
        self.processor = processor
        self.augment = augment_cfg if augment_cfg is not None and augment_cfg.enabled else None

    def prepare(self, dataset: Any, train: bool) -> Any:
        """The same rows, featurized on access (`with_transform`): nothing is decoded now."""
        return dataset.with_transform(partial(self.transform, train=train))

    def transform(self, batch: dict[str, list], train: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in batch.items() if k not in (self.input_column, SOURCE_ROW)}
        if self.input_column in batch:
            cells = batch[self.input_column]
            rows = batch.get(SOURCE_ROW) or [None] * len(cells)
            out.update(self.features(cells, rows, train and self.augment is not None))
        return out

    def decode(self, cell: dict, row: int | None, decoder: Any) -> Any:
        try:
            return decoder(cell)
        except ValueError as err:
            source = self.source
            if row is not None and self.locate is not None:
                source, row = self.locate(row)  # the shard and the row in it
            where = f", row {row}" if row is not None else ""
            raise DataError(f"{source}: column '{self.input_column}'{where}: {err}") from None

    def features(self, cells: list[dict], rows: list[int | None], augmented: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def collator(self) -> Any:
        from transformers import default_data_collator

        return default_data_collator

    def encode(self, cells: list[dict], return_tensors: str = "np") -> dict[str, Any]:
        """One inference batch from `{bytes, path}` cells (prediction streams batches, no `datasets`)."""
        features = self.features(cells, [None] * len(cells), augmented=False)
        if return_tensors == "np":
            return {k: v.numpy() for k, v in features.items()}
        return features

    @property
    def main_input(self) -> str:
        return self.processor.model_input_names[0]


class ImageFeaturizer(MediaFeaturizer):
    """Images -> `pixel_values` by the backbone's image processor; in training, optionally a random resized
    crop, a flip and colour jitter before it and random erasing after it."""

    input_column = IMAGE_COLUMN

    @classmethod
    def from_settings(cls, model_path: str | None, settings: FeaturizerSettings) -> ImageFeaturizer:
        processor = build_processor(IMAGE_COLUMN, model_path, settings.model_type, settings.processor_config)
        return cls(processor, getattr(settings.data, "image_augment", None))

    def features(self, cells: list[dict], rows: list[int | None], augmented: bool) -> dict[str, torch.Tensor]:
        images = [self.decode(cell, row, decode_image) for cell, row in zip(cells, rows, strict=True)]
        if not augmented:
            return dict(self.processor(images=images, return_tensors="pt"))
        aug = self.augment
        tensors = []
        for image in images:
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            pixels = augment.random_resized_crop(pixels, tuple(aug.crop_scale), tuple(aug.crop_ratio))
            pixels = augment.random_hflip(pixels, aug.hflip_prob)
            tensors.append(augment.color_jitter(pixels, aug.color_jitter).contiguous())
        out = dict(self.processor(images=tensors, do_rescale=False, return_tensors="pt"))
        key = self.main_input
        scale = tuple(aug.erasing_scale)
        out[key] = torch.stack([augment.random_erasing(p, aug.erasing_prob, scale) for p in out[key]])
        return out


class AudioFeaturizer(MediaFeaturizer):
    """Clips -> the feature extractor's inputs: resampled to its rate, cut (train: at a random offset when
    augmenting) or padded to `max_audio_seconds`; optional waveform and SpecAugment-style augmentation."""

    input_column = AUDIO_COLUMN

    def __init__(self, processor: Any, max_audio_seconds: float, augment_cfg: Any = None) -> None:
        super().__init__(processor, augment_cfg)
        self.rate = int(processor.sampling_rate)
        self.length = max(1, round(max_audio_seconds * self.rate))

    @classmethod
    def from_settings(cls, model_path: str | None, settings: FeaturizerSettings) -> AudioFeaturizer:
        processor = build_processor(AUDIO_COLUMN, model_path, settings.model_type, settings.processor_config)
        seconds = getattr(settings.data, "max_audio_seconds", 10.0)
        return cls(processor, seconds, getattr(settings.data, "audio_augment", None))

    def clip(self, samples: np.ndarray, augmented: bool) -> np.ndarray:
        """The model's window of one decoded clip (random window and waveform augmentations when training)."""
        offset = 0
        if augmented and len(samples) > self.length:
            offset = int(torch.randint(0, len(samples) - self.length + 1, ()))
        clip = fit_length(samples, self.length, offset)
        if not augmented:
            return clip
        aug = self.augment
        wave = augment.time_shift(torch.from_numpy(clip), round(aug.time_shift_seconds * self.rate))
        wave = augment.random_gain(wave, aug.gain_db)
        if aug.noise_snr_db is not None:
            wave = augment.add_noise(wave, tuple(aug.noise_snr_db))
        return wave.numpy()

    def features(self, cells: list[dict], rows: list[int | None], augmented: bool) -> dict[str, torch.Tensor]:
        decoder = partial(decode_audio, rate=self.rate)
        clips = [self.clip(self.decode(c, r, decoder), augmented) for c, r in zip(cells, rows, strict=True)]
        out = dict(self.processor(clips, sampling_rate=self.rate, return_tensors="pt"))
        if augmented:
            aug, key = self.augment, self.main_input
            masked = [
                augment.spec_mask(x, aug.time_masks, aug.time_mask_fraction, aug.freq_masks, aug.freq_mask_fraction)
                for x in out[key]
            ]
            out[key] = torch.stack(masked)
        return out


@dataclass
class FeaturizerSettings:
    """What a featurizer may need from the config besides the backbone's path."""

    max_length: int = 128
    data: Any = None
    """The `data` section (`max_audio_seconds`, `image_augment`, `audio_augment`)."""
    model_type: str | None = None
    """For a from-scratch backbone: its `model_type`, which picks the default processor."""
    processor_config: dict | None = None
