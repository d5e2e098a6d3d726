"""Tensor augmentations against their definitions (numpy references), and GeM pooling against a float64 loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_metric.data import augment
from hf_metric.model.pooling import pool


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_is_a_mirror_and_prob_zero_is_identity():
    image = torch.rand(3, 5, 7)
    np.testing.assert_array_equal(augment.random_hflip(image, 1.0, _gen()).numpy(), image.numpy()[..., ::-1])
    assert augment.random_hflip(image, 0.0, _gen()) is image


def test_resized_crop_boxes_respect_scale_and_ratio_and_full_crop_is_identity():
    for seed in range(50):
        top, left, h, w = augment.crop_box(60, 80, (0.2, 0.6), (0.5, 2.0), _gen(seed))
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        assert 0.2 * 4800 * 0.9 <= h * w <= 0.6 * 4800 * 1.1
        assert 0.5 * 0.85 <= w / h <= 2.0 * 1.15
    image = torch.rand(3, 6, 8)
    same = augment.random_resized_crop(image, (1.0, 1.0), (8 / 6, 8 / 6), _gen())
    torch.testing.assert_close(same, image, rtol=0, atol=0)
    out = augment.random_resized_crop(image, (0.3, 0.5), (0.75, 1.33), _gen())
    assert out.shape == image.shape


def test_color_jitter_matches_the_blend_definitions():
    image = torch.rand(3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(augment.color_jitter(image, 0.0, _gen()), image)
    # replay the three factors from the same generator and apply the blends in numpy
    g = _gen(3)
    f = [0.7 + 0.6 * torch.rand((), generator=g).item() for _ in range(3)]
    x = image.numpy()
    weights = np.array([0.299, 0.587, 0.114])[:, None, None]
    x = np.clip(x * f[0], 0, 1)
    mean_luma = (x * weights).sum(0).mean()
    x = np.clip(mean_luma + f[1] * (x - mean_luma), 0, 1)
    x = np.clip((x * weights).sum(0, keepdims=True) + f[2] * (x - (x * weights).sum(0, keepdims=True)), 0, 1)
    np.testing.assert_allclose(augment.color_jitter(image, 0.3, _gen(3)).numpy(), x, atol=1e-12)


def test_random_erasing_zeroes_one_rectangle_in_the_area_range():
    pixels = torch.ones(3, 20, 20)
    out = augment.random_erasing(pixels, 1.0, (0.1, 0.2), _gen(1))
    zero = (out == 0).all(dim=0).numpy()
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert zero.sum() == len(rows) * len(cols)  # one filled rectangle
    assert 0.1 * 400 * 0.8 <= zero.sum() <= 0.2 * 400 * 1.2
    assert torch.equal(augment.random_erasing(pixels, 0.0, (0.1, 0.2), _gen(1)), pixels)


def test_time_shift_is_a_roll_with_silence():
    x = torch.arange(1, 11, dtype=torch.float32)
    out = augment.time_shift(x, 3, _gen(5))
    shift = int(torch.randint(0, 7, (), generator=_gen(5))) - 3
    want = np.zeros(10, dtype=np.float32)
    if shift >= 0:
        want[shift:] = x.numpy()[: 10 - shift]
    else:
        want[:shift] = x.numpy()[-shift:]
    np.testing.assert_array_equal(out.numpy(), want)


def test_gain_stays_within_the_decibel_range():
    x = torch.ones(100)
    for seed in range(20):
        gain = augment.random_gain(x, 6.0, _gen(seed))[0].item()
        assert 10 ** (-6 / 20) - 1e-6 <= gain <= 10 ** (6 / 20) + 1e-6
    assert torch.equal(augment.random_gain(x, 0.0, _gen()), x)


@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_noise_is_added_at_the_requested_snr(snr):
    t = torch.arange(200_000, dtype=torch.float64) / 16000
    clean = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    noisy = augment.add_noise(clean, (snr, snr), _gen(2))
    measured = 10 * np.log10(clean.pow(2).mean().item() / (noisy - clean).pow(2).mean().item())
    assert measured == pytest.approx(snr, abs=0.1)


def test_spec_masks_zero_whole_frames_and_bins():
    features = torch.ones(100, 40)
    out = augment.spec_mask(features, 2, 0.1, 2, 0.2, _gen(4))
    zero_rows = (out == 0).all(dim=1).sum().item()
    zero_cols = (out == 0).all(dim=0).sum().item()
    assert 0 < zero_rows <= 2 * 10 and 0 < zero_cols <= 2 * 8
    assert ((out == 0) == ((out == 0).all(1, keepdim=True) | (out == 0).all(0, keepdim=True))).all()
    wave = augment.spec_mask(torch.ones(1000), 3, 0.05, 2, 0.2, _gen(4))  # raw waveform: time masks only
    assert 0 < (wave == 0).sum() <= 3 * 50


def _gem_reference(states: np.ndarray, p: float, mask: np.ndarray | None) -> np.ndarray:
    out = np.zeros((states.shape[0], states.shape[2]))
    for b in range(states.shape[0]):
        rows = [t for t in range(states.shape[1]) if mask is None or mask[b, t]]
        for d in range(states.shape[2]):
            vals = [max(float(states[b, t, d]), 1e-6) ** p for t in rows]
            out[b, d] = (sum(vals) / len(vals)) ** (1 / p)
    return out


def test_gem_pooling_matches_a_float64_loop_on_tokens_and_feature_maps():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 5, 3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = pool("gem", torch.tensor(states), torch.tensor(mask), gem_p=3.0).numpy()
    np.testing.assert_allclose(got, _gem_reference(states, 3.0, mask), rtol=1e-5)
    fmap = np.abs(rng.normal(size=(2, 4, 3, 2)))  # (batch, channels, H, W), as ConvNeXt returns
    positions = fmap.reshape(2, 4, 6).transpose(0, 2, 1)
    got = pool("gem", torch.tensor(fmap), gem_p=2.5).numpy()
    np.testing.assert_allclose(got, _gem_reference(positions, 2.5, None), rtol=1e-5)
    np.testing.assert_allclose(pool("mean", torch.tensor(fmap)).numpy(), positions.mean(axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="needs token states"):
        pool("cls", torch.tensor(fmap))
