"""credgui.metrics is the one owner of each map number: the crossing's edge cases, the Fourier
crop/pad (same boxes and values as the copies it replaced), the low-pass, the per-shell filter
and the training mask (same values as the old code, written out here as the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.metrics.filters import lowpass, shell_filter
from credgui.metrics.fsc import FSC_THRESHOLD, resolution_at, shell_index, shell_radius
from credgui.metrics.masks import soft_mask_from_map, soft_mask_sigma
from credgui.metrics.resample import resample_fourier, resampled_box
from credgui.recon.schedule import nominal_resolution
from credgui.recon.update import from_network, to_network

# --- the crossing ------------------------------------------------------------------------------


def test_crossing_edge_cases_are_an_argument():
    never = np.array([1.0, 0.9, 0.8, 0.7])  # never below 0.143
    at_once = np.array([1.0, 0.05, 0.0, 0.0])  # below from shell 1
    assert resolution_at(never, 0.143, 1.5, 6) == pytest.approx(6 * 1.5 / 3)  # Nyquist of the curve
    assert resolution_at(at_once, 0.143, 1.5, 6) == float("inf")
    assert resolution_at(never, 0.143, 1.5, 6, no_crossing=None) is None
    assert resolution_at(at_once, 0.143, 1.5, 6, no_crossing=None) is None
    with pytest.raises(ValueError, match="no_crossing"):
        resolution_at(never, 0.143, 1.5, 6, no_crossing="nyquist")
    # a real crossing: both choices give the same interpolated number
    curve = np.array([1.0, 0.9, 0.5, 0.1, 0.0])
    idx = 2 + (0.5 - 0.143) / (0.5 - 0.1)
    for choice in ("bound", None):
        assert resolution_at(curve, 0.143, 2.0, 8, no_crossing=choice) == pytest.approx(8 * 2.0 / idx)


def test_the_hooks_nominal_resolution_is_the_one_crossing():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(3, 40))
        curve = np.sort(rng.uniform(-0.1, 1.0, n))[::-1]  # falling, crossing anywhere or nowhere
        expect = resolution_at(curve, FSC_THRESHOLD, 1.7, 2 * (n - 1), no_crossing=None)
        assert nominal_resolution(curve, 1.7, 2 * (n - 1)) == expect
    # the hook's own refusals stay: absent, too short, not finite
    assert nominal_resolution(None, 1.0, 8) is None
    assert nominal_resolution([1.0, 0.1], 1.0, 8) is None
    assert nominal_resolution([1.0, np.nan, 0.1], 1.0, 8) is None


# --- the Fourier crop/pad ------------------------------------------------------------------------


def _old_fourier_crop(vol: np.ndarray, n: int) -> np.ndarray:
    """simulate.model.fourier_crop as it was (the reference for the origin-at-voxel-0 path)."""
    m = vol.shape[0]
    f = np.fft.rfftn(vol)
    h = n // 2
    idx = np.r_[0:h, m - h : m] if n % 2 == 0 else np.r_[0 : h + 1, m - h : m]
    out = f[np.ix_(idx, idx, np.arange(n // 2 + 1))]
    if n % 2 == 0:
        out[h, :, :] = 0
        out[:, h, :] = 0
        out[:, :, h] = 0
    return np.fft.irfftn(out, s=(n, n, n), axes=(0, 1, 2)) * (n**3 / m**3)


@pytest.mark.parametrize("box,pixel_size,voxel_size,expected", [
    (64, 2.2, 1.5, 94), (40, 3.5, 1.5, 94), (96, 1.0, 1.5, 64), (24, 2.0, 2.0, 24), (33, 1.0, 2.0, 16),
])
def test_the_hooks_network_box_is_unchanged(box, pixel_size, voxel_size, expected):
    # hand values of the hook's rule: the nearest even box covering box * pixel_size A
    assert resampled_box(box, pixel_size, voxel_size) == expected
    vol = np.random.default_rng(box).standard_normal((box,) * 3).astype(np.float32)
    z, grid = to_network(vol, pixel_size, voxel_size)
    assert z.shape == (expected,) * 3 and grid.net_box == expected and grid.box == box
    assert from_network(z, grid).shape == (box,) * 3


@pytest.mark.parametrize("m,n", [(48, 24), (45, 15), (40, 20)])
def test_crop_with_origin_at_voxel_0_matches_the_simulators_old_crop(m, n):
    rng = np.random.default_rng(m)
    fine = rng.standard_normal((m,) * 3)
    new = resample_fourier(fine, n, centred=False)
    old = _old_fourier_crop(fine, n)
    assert new.shape == old.shape == (n,) * 3
    np.testing.assert_allclose(new, old, atol=2e-5 * np.abs(old).max())


def test_centred_crop_keeps_a_band_limited_map():
    # a map already band-limited to the small grid survives down and up unchanged
    small = lowpass(np.random.default_rng(0).standard_normal((32,) * 3).astype(np.float32), 1.0, 4.0)
    up = resample_fourier(small, 48)
    np.testing.assert_allclose(resample_fourier(up, 32), small, atol=1e-4 * np.abs(small).max())


# --- filters and masks ---------------------------------------------------------------------------


def test_lowpass_and_shell_filter_match_the_old_code():
    rng = np.random.default_rng(1)
    vol = rng.standard_normal((30,) * 3).astype(np.float32)
    # simulate.dataset.lowpass as it was
    n = 30
    kz, ky, kx = np.fft.fftfreq(n)[:, None, None], np.fft.fftfreq(n)[None, :, None], np.fft.rfftfreq(n)[None, None, :]
    shell = np.sqrt(kx * kx + ky * ky + kz * kz) * n
    cut = n * 2.0 / 9.0
    w = 0.5 - 0.5 * np.cos(np.pi * np.clip((cut + 1 - shell) / 2.0, 0.0, 1.0))
    old = np.fft.irfftn(np.fft.rfftn(vol) * w, s=vol.shape, axes=(0, 1, 2)).astype(np.float32)
    np.testing.assert_allclose(lowpass(vol, 2.0, 9.0), old, atol=1e-6)
    # denoise.pairs.coarsened_truth's filter as it was: FSC per rounded shell, 0 beyond
    fsc = np.linspace(1.0, 0.0, 10)
    shells = np.rint(shell_radius(vol.shape)).astype(np.int64)
    wt = np.zeros(n + 1)
    wt[:10] = fsc
    old = np.fft.irfftn(np.fft.rfftn(vol.astype(np.float64)) * wt[shells], s=vol.shape, axes=(0, 1, 2))
    np.testing.assert_allclose(shell_filter(vol.astype(np.float64), fsc), old, atol=1e-12)
    assert (shells == shell_index(vol.shape)).all()


def test_training_mask_matches_the_old_training_mask():
    from scipy import ndimage

    vol = np.zeros((32,) * 3, np.float32)
    vol[10:22, 12:20, 9:23] = 1.0
    vol += 0.01 * np.random.default_rng(2).standard_normal(vol.shape).astype(np.float32)
    # denoise.train.soft_mask_from_map as it was (dilate 3, soft 4)
    smooth = ndimage.gaussian_filter(vol, 1.0)
    core = smooth > smooth.mean() + smooth.std()
    dist = ndimage.distance_transform_edt(~core)
    old = (0.5 - 0.5 * np.cos(np.pi * np.clip((3 + 4 - dist) / 4, 0.0, 1.0))).astype(np.float32)
    np.testing.assert_allclose(soft_mask_sigma(vol), old, atol=1e-6)
    assert (soft_mask_sigma(np.zeros((8,) * 3)) == 1.0).all()  # nothing inside: the whole box
    # the other threshold rule: a different mask of the same map (5 % of the maximum, no smoothing)
    assert not np.allclose(soft_mask_from_map(vol, 1.0), soft_mask_sigma(vol))
