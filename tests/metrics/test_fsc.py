"""FSC, shell indices and resolution crossings (credgui.metrics.fsc)."""

import numpy as np
import pytest

from credgui.metrics.fsc import fsc, fsc_to_resolution_axis, resolution_at, shell_index


def _lowpass(vol: np.ndarray, transfer) -> np.ndarray:
    """Apply a radial transfer function transfer(r in Fourier voxels) to a cubic map."""
    n = vol.shape[0]
    k = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    return np.fft.irfftn(np.fft.rfftn(vol, axes=(0, 1, 2)) * transfer(r), s=vol.shape, axes=(0, 1, 2))


def _fsc_full_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Slow, independent FSC: full complex FFT, explicit radius per voxel, loop over shells."""
    n = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.rint(np.sqrt(kz**2 + ky**2 + kx**2)).astype(int)
    out = []
    for s in range(n // 2 + 1):
        sel = r == s
        num = np.real(np.sum(fa[sel] * np.conj(fb[sel])))
        den = np.sqrt(np.sum(np.abs(fa[sel]) ** 2) * np.sum(np.abs(fb[sel]) ** 2))
        out.append(num / den)
    return np.array(out)


@pytest.mark.parametrize("n", [16, 17])
def test_shell_index_is_rounded_fourier_radius(n):
    idx = shell_index((n, n, n))
    assert idx.shape == (n, n, n // 2 + 1)
    assert idx[0, 0, 0] == 0
    assert idx[0, 0, 3] == 3 and idx[0, 3, 0] == 3 and idx[3, 0, 0] == 3
    assert idx[-3, 0, 0] == 3  # negative frequencies wrap
    assert idx[1, 1, 1] == round(np.sqrt(3))
    assert idx.max() == round(np.sqrt(3) * (n // 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [24, 25])
def test_fsc_matches_full_fft_reference(n, dtype):
    rng = np.random.default_rng(1)
    s = rng.standard_normal((n, n, n))
    a = (s + 0.7 * rng.standard_normal((n, n, n))).astype(dtype)
    b = (s + 0.7 * rng.standard_normal((n, n, n))).astype(dtype)
    got = fsc(a, b)
    ref = _fsc_full_reference(a.astype(np.float64), b.astype(np.float64))
    assert got.shape == (n // 2 + 1,)
    np.testing.assert_allclose(got, ref, atol=1e-5 if dtype == np.float32 else 1e-10)


def test_fsc_of_a_map_with_itself_is_one():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((32, 32, 32))
    np.testing.assert_allclose(fsc(a, a), 1.0, atol=1e-12)
    # scaling one map per shell does not change the correlation
    np.testing.assert_allclose(fsc(a, 3.0 * a), 1.0, atol=1e-12)
    np.testing.assert_allclose(fsc(a, -a), -1.0, atol=1e-12)


def test_fsc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(3)
    n = 48
    a, b = rng.standard_normal((2, n, n, n))
    curve = fsc(a, b)
    counts = np.bincount(shell_index((n, n, n)).ravel())[: n // 2 + 1]
    # each shell holds about counts/2 independent complex values: sd of FSC ~ 1/sqrt(counts)
    sd = 1.0 / np.sqrt(counts[4:])
    assert np.all(np.abs(curve[4:]) < 5 * sd)
    assert abs(curve[4:].mean()) < 0.02


def test_fsc_known_lowpass_gives_known_crossing():
    """Half maps s + noise with s low-passed by H(r) = 1/(1+(r/r0)^8) and noise power 0.1:
    FSC(r) = H^2 / (H^2 + 0.1), which is 0.5 where (r/r0)^8 = 1/sqrt(0.1) - 1."""
    rng = np.random.default_rng(4)
    n, r0, noise_power, pixel_size = 64, 15.0, 0.1, 1.5
    signal = _lowpass(rng.standard_normal((n, n, n)), lambda r: 1.0 / (1.0 + (r / r0) ** 8))
    half1 = signal + np.sqrt(noise_power) * rng.standard_normal((n, n, n))
    half2 = signal + np.sqrt(noise_power) * rng.standard_normal((n, n, n))
    curve = fsc(half1, half2)
    r_expected = r0 * (1.0 / np.sqrt(noise_power) - 1.0) ** (1 / 8)
    res = resolution_at(curve, 0.5, pixel_size, n)
    assert res == pytest.approx(n * pixel_size / r_expected, rel=0.03)
    # and the whole curve follows the formula within sampling error
    r = np.arange(n // 2 + 1)
    h2 = (1.0 / (1.0 + (r / r0) ** 8)) ** 2
    np.testing.assert_allclose(curve[2:], (h2 / (h2 + noise_power))[2:], atol=0.08)


def test_fsc_with_mask_equals_fsc_of_masked_maps():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 20, 20, 20))
    mask = np.zeros((20, 20, 20))
    mask[5:15, 4:16, 6:14] = 1.0
    np.testing.assert_allclose(fsc(a, b, mask), fsc(a * mask, b * mask), atol=1e-12)
    assert not np.allclose(fsc(a, b, mask), fsc(a, b))


def test_fsc_rejects_mismatched_or_non_cubic_maps():
    with pytest.raises(ValueError, match="must match"):
        fsc(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)))
    with pytest.raises(ValueError, match="cubic"):
        fsc(np.zeros((8, 8, 9)), np.zeros((8, 8, 9)))


def test_resolution_at_interpolates_between_shells():
    curve = np.array([1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
    # 0.143 is crossed between shell 4 (0.3) and 5 (0.1): index 4 + 0.157/0.2
    idx = 4 + (0.3 - 0.143) / 0.2
    assert resolution_at(curve, 0.143, 2.0, 12) == pytest.approx(12 * 2.0 / idx)
    # exactly on a shell value
    assert resolution_at(curve, 0.5, 2.0, 12) == pytest.approx(12 * 2.0 / 3)
    # a curve that dips and recovers: the first crossing counts
    dip = np.array([1.0, 0.9, 0.1, 0.9, 0.9])
    assert resolution_at(dip, 0.5, 1.0, 8) == pytest.approx(8 / (1 + 0.4 / 0.8))


def test_resolution_at_edge_cases():
    assert resolution_at(np.array([1.0, 0.05, 0.0]), 0.143, 1.0, 4) == float("inf")
    assert resolution_at(np.array([0.0, 0.9, 0.8, 0.7]), 0.143, 1.5, 6) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        resolution_at(np.array([1.0]), 0.143, 1.0, 2)


def test_fsc_to_resolution_axis():
    axis = fsc_to_resolution_axis(5, 2.0, 8)
    assert np.isinf(axis[0])
    np.testing.assert_allclose(axis[1:], [16.0, 8.0, 16.0 / 3, 4.0])
