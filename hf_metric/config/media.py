"""Config sections for image and audio inputs: the training augmentations (off by default, train split only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import at_least as _at_least
from .schema import check as _check


def _check_range(values: list[float], key: str, low: float, high: float) -> None:
    _check(len(values) == 2 and values[0] <= values[1], key, f"must be [min, max] with min <= max, got {values}")
    _check(low <= values[0] and values[1] <= high, key, f"must lie in [{low}, {high}], got {values}")


@dataclass
class ImageAugmentSection:
    """Image augmentations, applied in this order to training images only (`hf_metric.data.augment`)."""

    enabled: bool = False
    """Turn image augmentation on (training split only)."""
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    """Random resized crop: share of the image area kept ([1, 1] turns the crop off)."""
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    """Random resized crop: range of the aspect ratio."""
    hflip_prob: float = 0.5
    """Probability of a horizontal flip (set 0 for digits or text in images)."""
    color_jitter: float = 0.2
    """Brightness, contrast and saturation each scaled by a factor drawn from [1 - x, 1 + x] (0: off)."""
    erasing_prob: float = 0.25
    """Probability of erasing one rectangle (set to 0 after normalisation)."""
    erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.2])
    """Area share of the erased rectangle, [min, max]."""

    def validate(self) -> None:
        _check_range(self.crop_scale, "data.image_augment.crop_scale", 0.0, 1.0)
        _check(self.crop_scale[0] > 0, "data.image_augment.crop_scale", "minimum must be > 0")
        _check_range(self.crop_ratio, "data.image_augment.crop_ratio", 1e-3, 1e3)
        _check(0 <= self.hflip_prob <= 1, "data.image_augment.hflip_prob", "must be in [0, 1]")
        _check(0 <= self.color_jitter < 1, "data.image_augment.color_jitter", "must be in [0, 1)")
        _check(0 <= self.erasing_prob <= 1, "data.image_augment.erasing_prob", "must be in [0, 1]")
        _check_range(self.erasing_scale, "data.image_augment.erasing_scale", 0.0, 1.0)


@dataclass
class AudioAugmentSection:
    """Audio augmentations for training clips: on the waveform (shift, gain, noise), then SpecAugment-style
    masks on the extractor's features (time and frequency for spectrograms, time only for raw waveforms)."""

    enabled: bool = False
    """Turn audio augmentation on (training split only)."""
    time_shift_seconds: float = 0.1
    """Roll the clip by up to this many seconds either way (the gap is silence)."""
    gain_db: float = 6.0
    """Scale by a gain drawn from [-x, +x] dB."""
    noise_snr_db: list[float] | None = field(default_factory=lambda: [15.0, 40.0])
    """Add white noise at a signal-to-noise ratio drawn from this range (null: off)."""
    time_masks: int = 2
    """Number of SpecAugment time masks per clip."""
    time_mask_fraction: float = 0.1
    """Each time mask covers up to this share of the frames (or samples)."""
    freq_masks: int = 2
    """Number of SpecAugment frequency masks per clip (spectrogram features only)."""
    freq_mask_fraction: float = 0.15
    """Each frequency mask covers up to this share of the feature bins."""

    def validate(self) -> None:
        _at_least(self, "data.audio_augment.", time_shift_seconds=0, gain_db=0)
        if self.noise_snr_db is not None:
            _check_range(self.noise_snr_db, "data.audio_augment.noise_snr_db", -50.0, 200.0)
        _check(self.time_masks >= 0 and self.freq_masks >= 0, "data.audio_augment.time_masks", "counts must be >= 0")
        for name in ("time_mask_fraction", "freq_mask_fraction"):
            _check(0 <= getattr(self, name) < 1, f"data.audio_augment.{name}", "must be in [0, 1)")
