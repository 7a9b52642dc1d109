"""Fourier resampling to a denoiser's voxel size and back."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.metrics.resample import resample_fourier, resampled_box


def _gaussian(box: int, sigma: float, shift: tuple[float, float, float] = (0, 0, 0)) -> np.ndarray:
    c = np.arange(box) - box // 2
    g = [np.exp(-((c - s) ** 2) / (2 * sigma**2)) for s in shift]
    return (g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]).astype(np.float32)


def _moments(vol: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (voxels, relative to box//2) and rms width along z of a positive blob."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    w = vol / vol.sum()
    mz = (w.sum(axis=(1, 2)) * c).sum()
    my = (w.sum(axis=(0, 2)) * c).sum()
    mx = (w.sum(axis=(0, 1)) * c).sum()
    sz = np.sqrt((w.sum(axis=(1, 2)) * (c - mz) ** 2).sum())
    return np.array([mz, my, mx]), float(sz)


@pytest.mark.parametrize("box,pixel,voxel,expected", [(40, 3.5, 1.5, 94), (40, 3.5, 3.5, 40), (64, 1.0, 1.5, 42),
                                                      (96, 1.5, 1.5, 96), (33, 1.0, 2.0, 16)])
def test_box_is_even_and_covers_the_same_length(box, pixel, voxel, expected):
    assert resampled_box(box, pixel, voxel) == expected


def test_band_limited_map_survives_down_and_up_sampling():
    vol = _gaussian(48, 4.0, (2.0, -3.0, 1.0)) + 0.5 * _gaussian(48, 5.0, (-6.0, 4.0, 0.0))
    small = resample_fourier(vol, 32)
    back = resample_fourier(small, 48)
    assert small.shape == (32, 32, 32) and back.shape == (48, 48, 48)
    assert np.linalg.norm(back - vol) / np.linalg.norm(vol) < 1e-4


def test_up_then_down_is_the_identity():
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((24, 24, 24)).astype(np.float32)
    # drop the Nyquist planes first: the smaller grid cannot hold them
    f = np.fft.rfftn(np.fft.ifftshift(vol))
    f[12], f[:, 12], f[:, :, 12] = 0, 0, 0
    vol = np.fft.fftshift(np.fft.irfftn(f, s=vol.shape, axes=(0, 1, 2))).astype(np.float32)
    back = resample_fourier(resample_fourier(vol, 40), 24)
    assert np.abs(back - vol).max() < 1e-5 * np.abs(vol).max() + 1e-6


@pytest.mark.parametrize("pixel,voxel", [(1.5, 2.0), (2.0, 1.25)])
def test_gaussian_width_scales_with_voxel_size_and_height_is_kept(pixel, voxel):
    box, sigma_a = 48, 6.0
    vol = _gaussian(box, sigma_a / pixel, (0.0, 0.0, 0.0))
    new_box = resampled_box(box, pixel, voxel)
    out = resample_fourier(vol, new_box)
    centre, width = _moments(out)
    assert np.abs(centre).max() < 1e-3  # stays at the box centre (voxel new_box//2)
    effective = box * pixel / new_box  # the even box rounds the voxel size slightly
    assert abs(effective - voxel) < 0.02 * voxel
    assert width * effective == pytest.approx(sigma_a, rel=0.005)  # same width in Angstrom
    assert out.max() == pytest.approx(1.0, rel=0.02)  # density height kept
    assert out[new_box // 2, new_box // 2, new_box // 2] == pytest.approx(out.max())
