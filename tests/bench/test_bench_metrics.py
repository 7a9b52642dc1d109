"""The benchmark's metrics on inputs whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from credgui.bench.metrics import overestimation, overestimation_from_maps
from credgui.metrics.angles import angle_summary, angular_errors
from credgui.metrics.angles import angular_error
from credgui.metrics.fsc import fsc
from credgui.metrics.masks import soft_sphere_mask


def _radius(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def _band(vol: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Keep Fourier shells lo..hi-1 (rounded radius, as the FSC's shells)."""
    r = np.rint(_radius(vol.shape[0]))
    f = np.fft.rfftn(vol) * ((r >= lo) & (r < hi))
    return np.fft.irfftn(f, s=vol.shape, axes=(0, 1, 2))


def test_fsc_of_a_map_with_itself_is_one_at_every_shell():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(32, 32, 32)).astype(np.float32)
    for mask in (None, soft_sphere_mask(32, 10, 4)):
        curve = fsc(vol, vol, mask)
        np.testing.assert_allclose(curve, 1.0, atol=1e-5)


def test_angular_error_of_identical_orientations_is_zero():
    rng = np.random.default_rng(2)
    rot, tilt, psi = rng.uniform(-180, 180, 500), rng.uniform(0, 180, 500), rng.uniform(-180, 180, 500)
    err = angular_error(rot, tilt, psi, rot, tilt, psi)
    assert np.max(err) < 1e-5


@pytest.mark.parametrize("delta", [0.3, 5.0, 37.0, 120.0, 179.0])
def test_angular_error_of_orientations_rotated_by_a_known_angle(delta):
    rng = np.random.default_rng(3)
    rot, tilt, psi = rng.uniform(-180, 180, 200), rng.uniform(1, 179, 200), rng.uniform(-180, 180, 200)
    # R = Rz(psi) Ry(tilt) Rz(rot): shifting psi by d gives R1 R2^T = Rz(d); shifting rot gives a
    # conjugate of Rz(d); shifting tilt with rot = psi = 0 gives Ry(d): all rotations by d
    np.testing.assert_allclose(angular_error(rot, tilt, psi + delta, rot, tilt, psi), delta, atol=1e-6)
    np.testing.assert_allclose(angular_error(rot + delta, tilt, psi, rot, tilt, psi), delta, atol=1e-6)
    z = np.zeros(200)
    np.testing.assert_allclose(angular_error(z, tilt * 0 + 10, z, z, tilt * 0 + 10 + delta, z), delta, atol=1e-6)


def _write_poses(path, rot, tilt, psi, stack="particles.mrcs", width=6):
    rows = "\n".join(f"{i + 1:0{width}d}@{stack} {a:.6f} {b:.6f} {c:.6f}" for i, (a, b, c) in enumerate(zip(rot, tilt, psi)))
    path.write_text("\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n_rlnAnglePsi #4\n"
                    + rows + "\n")


def test_angular_errors_from_star_files_match_by_image_and_summarise(tmp_path):
    rng = np.random.default_rng(4)
    n = 400
    rot, tilt, psi = rng.uniform(-180, 180, n), rng.uniform(1, 179, n), rng.uniform(-180, 180, n)
    shift = np.where(np.arange(n) < n // 2, 2.2, 20.2)  # half the particles 2.2 deg off, half 20.2 deg
    _write_poses(tmp_path / "true.star", rot, tilt, psi)
    # the refined file names its stack with a project-relative path and other zero padding
    order = rng.permutation(n)
    refined = tmp_path / "refined.star"
    rows = "\n".join(f"{i + 1}@Data/particles.mrcs {rot[i]:.6f} {tilt[i]:.6f} {psi[i] + shift[i]:.6f}" for i in order)
    refined.write_text("\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n_rlnAnglePsi #4\n" + rows + "\n")
    err = angular_errors(refined, tmp_path / "true.star")
    assert err.size == n
    s = angle_summary(err)
    assert s["n"] == n
    assert s["median_deg"] == pytest.approx(11.2, abs=1e-3)  # the mean of the two middle values
    assert s["mean_deg"] == pytest.approx(11.2, abs=1e-3)
    assert s["p90_deg"] == pytest.approx(20.2, abs=1e-3)
    counts = np.asarray(s["hist_counts"])
    assert counts.sum() == n and counts[int(2.2 / s["hist_bin_deg"])] == n // 2


def test_overestimation_numbers():
    # reported 4 A, truth 6 A, box 60 at 2 A/px: shells 30 and 20
    angst, shells = overestimation(4.0, 6.0, 60, 2.0)
    assert angst == pytest.approx(2.0) and shells == pytest.approx(10.0)
    angst, shells = overestimation(6.0, 6.0, 60, 2.0)
    assert angst == 0 and shells == 0
    angst, shells = overestimation(8.0, 6.0, 60, 2.0)  # under-estimated: negative
    assert angst < 0 and shells < 0
    angst, shells = overestimation(8.0, math.inf, 60, 2.0)  # truth never correlates
    assert angst == math.inf and shells == pytest.approx(15.0)


def test_overestimation_of_half_maps_sharing_noise_beyond_the_true_resolution():
    """Half maps = truth up to shell 8 + noise that both halves share in shells 8..14 (as a denoiser
    inventing the same features in both halves) + small independent noise. The half-map FSC stays
    high to shell 14 while the map matches the truth only to shell 8: 6 shells overestimated."""
    rng = np.random.default_rng(5)
    n, px = 48, 2.0
    truth = _band(rng.normal(size=(n, n, n)), 0, n)  # white truth
    signal = _band(truth, 0, 8)
    shared = _band(rng.normal(size=(n, n, n)), 8, 14)
    h1 = signal + shared + 0.05 * rng.normal(size=(n, n, n))
    h2 = signal + shared + 0.05 * rng.normal(size=(n, n, n))
    r = overestimation_from_maps(h1, h2, truth, px)
    # FSC ~1 up to the last correlated shell, ~0 after: the crossings interpolate to
    # 13 + (1 - 0.143) for the half maps (0.143) and 7 + 0.5 for the truth (0.5)
    half_x, true_x = 13 + (1 - 0.143), 7 + 0.5
    assert r["overestimation_shells"] == pytest.approx(half_x - true_x, abs=0.2)
    assert r["overestimation_angst"] == pytest.approx(n * px / true_x - n * px / half_x, rel=0.05)
    assert r["overestimation_angst"] > 0
    # control: the same without shared noise is not overestimated
    h1 = signal + 0.05 * rng.normal(size=(n, n, n))
    h2 = signal + 0.05 * rng.normal(size=(n, n, n))
    r = overestimation_from_maps(h1, h2, truth, px)
    assert abs(r["overestimation_shells"]) <= 1.0
