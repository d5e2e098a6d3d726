"""Training augmentations for images and audio, on torch tensors.

Why not torchvision/torchaudio: the torchvision wheel built for torch 2.13.0 (0.28.0) fails to import beside
the CPU torch this project pins ("operator torchvision::nms does not exist"), and torchaudio releases declare
other torch versions, so installing them would replace torch. The few transforms needed are short on tensors;
each follows the torchvision v2 / SpecAugment definition named in its docstring.

Randomness comes from `torch`'s global generator (seeded by the Trainer, and per DataLoader worker), or from
the `generator` passed in. Validation never calls these (`featurize_*` apply them to the train split only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (), generator=generator))


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """`(top, left, h, w)` of a random crop as torchvision's `RandomResizedCrop.get_params`: area share from
    `scale`, aspect ratio log-uniform in `ratio`, 10 tries, else the whole image clipped to `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(height - h, generator), _randint(width - w, generator), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random crop (`crop_box`) of a `(C, H, W)` image, resized back to `(H, W)` (bilinear, antialiased)."""
    height, width = image.shape[-2:]
    top, left, h, w = crop_box(height, width, scale, ratio, generator)
    crop = image[..., top : top + h, left : left + w]
    if (h, w) == (height, width):
        return crop
    return F.interpolate(crop[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def random_hflip(image: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror left-right with probability `prob`."""
    return image.flip(-1) if prob > 0 and torch.rand((), generator=generator).item() < prob else image


def _gray(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, as torchvision's `rgb_to_grayscale`, `(1, H, W)`."""
    r, g, b = image[0], image[1], image[2]
    return (0.299 * r + 0.587 * g + 0.114 * b)[None]


def color_jitter(image: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast and saturation of an RGB image in [0, 1], each by a factor in [1 - s, 1 + s]
    (torchvision's `adjust_brightness/contrast/saturation` blends), clamped to [0, 1]."""
    if strength <= 0:
        return image
    low, high = 1 - strength, 1 + strength
    image = (image * _uniform(low, high, generator)).clamp(0, 1)
    mean = _gray(image).mean()
    image = (mean + _uniform(low, high, generator) * (image - mean)).clamp(0, 1)
    gray = _gray(image)
    return (gray + _uniform(low, high, generator) * (image - gray)).clamp(0, 1)


def random_erasing(
    pixels: torch.Tensor,
    prob: float,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """With probability `prob`, set one random rectangle of a normalized `(C, H, W)` image to 0 (the dataset
    mean after normalization), as torchvision's `RandomErasing(value=0)`."""
    if prob <= 0 or torch.rand((), generator=generator).item() >= prob:
        return pixels
    height, width = pixels.shape[-2:]
    area = height * width
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), generator))
        h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < h < height and 0 < w < width:
            top, left = _randint(height - h, generator), _randint(width - w, generator)
            pixels = pixels.clone()
            pixels[..., top : top + h, left : left + w] = 0
            return pixels
    return pixels


def time_shift(samples: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move a 1-D clip by a random number of samples in [-max_shift, max_shift]; the gap is silence."""
    if max_shift <= 0:
        return samples
    shift = _randint(2 * max_shift, generator) - max_shift
    out = torch.zeros_like(samples)
    if shift > 0:
        out[shift:] = samples[:-shift]
    elif shift < 0:
        out[:shift] = samples[-shift:]
    else:
        out = samples.clone()
    return out


def random_gain(samples: torch.Tensor, max_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale by a gain drawn uniformly from [-max_db, +max_db] decibels."""
    if max_db <= 0:
        return samples
    return samples * 10 ** (_uniform(-max_db, max_db, generator) / 20)


def add_noise(samples: torch.Tensor, snr_db: tuple[float, float], generator: torch.Generator | None = None):
    """Add white Gaussian noise at a signal-to-noise ratio drawn from `snr_db` (power ratio, in dB)."""
    power = samples.pow(2).mean()
    if power <= 0:
        return samples
    snr = _uniform(snr_db[0], snr_db[1], generator)
    noise = torch.randn(samples.shape, generator=generator, dtype=samples.dtype)
    return samples + noise * torch.sqrt(power / 10 ** (snr / 10))


def spec_mask(
    features: torch.Tensor,
    time_masks: int,
    time_fraction: float,
    freq_masks: int,
    freq_fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment-style masking (Park et al., 2019) of one example's features, set to 0: `time_masks` spans
    of up to `time_fraction` of the frames, and for 2-D `(frames, bins)` features `freq_masks` bands of up to
    `freq_fraction` of the bins. A 1-D raw waveform (Wav2Vec2's `input_values`) gets the time masks only."""
    out = features.clone()
    frames = out.shape[0]
    for _ in range(time_masks):
        width = _randint(int(frames * time_fraction), generator)
        start = _randint(frames - width, generator)
        out[start : start + width] = 0
    if out.ndim >= 2:
        bins = out.shape[-1]
        for _ in range(freq_masks):
            width = _randint(int(bins * freq_fraction), generator)
            start = _randint(bins - width, generator)
            out[..., start : start + width] = 0
    return out
