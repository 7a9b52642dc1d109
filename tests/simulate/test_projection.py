"""Orientations, CTF and the Fourier-slice projector."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from credgui.simulate.projection import (
    FourierProjector,
    ctf_rfft,
    euler_to_matrix,
    matrix_to_euler,
    random_rotations,
)


def test_random_rotations_are_uniform_and_roundtrip_through_relion_euler_angles():
    rng = np.random.default_rng(1)
    r = random_rotations(20000, rng)
    assert np.allclose(np.linalg.det(r), 1.0)
    assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    # Haar measure: E[R] = 0; the viewing direction's cos(tilt) is uniform on [-1, 1]
    assert np.abs(r.mean(0)).max() < 0.02
    rot, tilt, psi = matrix_to_euler(r)
    hist, _ = np.histogram(np.cos(np.deg2rad(tilt)), bins=10, range=(-1, 1))
    assert hist.min() > 0.9 * len(r) / 10 and hist.max() < 1.1 * len(r) / 10
    assert np.allclose(euler_to_matrix(rot, tilt, psi), r, atol=1e-12)
    assert tilt.min() >= 0 and tilt.max() <= 180


def test_euler_matrix_is_relion_zyz():
    # RELION: A = Rz(psi) Ry(tilt) Rz(rot), with Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]
    def rz(a):
        c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(a):
        c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    for rot, tilt, psi in [(10, 20, 30), (-150, 95, 170), (33, 160, -80)]:
        assert np.allclose(euler_to_matrix(rot, tilt, psi)[0], rz(psi) @ ry(tilt) @ rz(rot))


def _blob(box: int, sigma_px: float, centre_offset=(0, 0, 0)) -> np.ndarray:
    c = box // 2 + np.asarray(centre_offset)
    z, y, x = np.indices((box,) * 3)
    return np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * sigma_px**2))


def test_projection_matches_a_real_space_projection():
    box = 32
    vol = _blob(box, 2.0, (0, 0, 3)) + 0.7 * _blob(box, 1.5, (2, -3, 0))  # asymmetric
    proj = FourierProjector(vol)
    mats = random_rotations(4, np.random.default_rng(3))
    imgs = proj.project(mats)
    c = box // 2
    for a, img in zip(mats, imgs):
        # p(x, y) = sum_z V(A^T (x, y, z)); volume array (z, y, x)
        m_zyx = a.T[::-1, ::-1]
        rotated = ndimage.affine_transform(vol, m_zyx, offset=c - m_zyx @ np.full(3, c), order=3)
        ref = rotated.sum(0)
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.99
        # the DC term carries the gridding correction (as RELION's): a percent or two high
        assert abs(img.sum() / ref.sum() - 1) < 0.03


def test_origin_offset_moves_the_particle_to_centre_minus_origin():
    box = 32
    vol = _blob(box, 2.0)
    img = FourierProjector(vol).project(np.eye(3)[None], origins_px=np.array([[3.0, -2.0]]))[0]
    y, x = np.unravel_index(np.argmax(img), img.shape)
    assert (x, y) == (box // 2 - 3, box // 2 + 2)


def _radial_profile(power: np.ndarray) -> np.ndarray:
    """Mean over rings of a centred 2D power spectrum, one value per Fourier pixel radius."""
    n = power.shape[0]
    y, x = np.indices(power.shape) - n // 2
    r = np.rint(np.hypot(x, y)).astype(int)
    return np.bincount(r.ravel(), power.ravel()) / np.bincount(r.ravel())


@pytest.mark.parametrize("defocus", [5000.0, 9000.0])
def test_thon_ring_zeros_fall_where_the_ctf_formula_puts_them(defocus):
    box, pix = 128, 1.0
    vol = _blob(box, 1.0)  # smooth spectrum without zeros of its own
    mats = random_rotations(2, np.random.default_rng(0))
    ctf = ctf_rfft(box, pix, np.full(2, defocus), np.full(2, defocus), np.zeros(2))
    imgs = FourierProjector(vol, pad=1).project(mats, ctf=ctf)  # noiseless, CTF only
    power = np.mean([np.abs(np.fft.fftshift(np.fft.fft2(im))) ** 2 for im in imgs], axis=0)
    profile = _radial_profile(power)[: box // 2]
    step = 1 / (box * pix)  # one Fourier pixel, 1/A
    k = np.arange(box // 2) * step
    minima = np.array([k[i] for i in range(2, box // 2 - 1) if profile[i] < profile[i - 1] and profile[i] < profile[i + 1]])
    # the textbook CTF: zeros where chi(k) = pi dF lam k^2 - pi/2 Cs lam^3 k^4 + asin(Q) = m pi
    volt = 300e3
    lam = 12.2643247 / np.sqrt(volt * (1 + 0.978466e-6 * volt))
    cs, q = 2.7e7, 0.1
    kk = np.linspace(0, k[-1], 400001)
    chi = np.pi * defocus * lam * kk**2 - np.pi / 2 * cs * lam**3 * kk**4 + np.arcsin(q)
    zeros = np.array([kk[np.argmax(chi >= m * np.pi)] for m in range(1, 60) if chi.max() >= m * np.pi])
    # rings resolvable on a 1-pixel radial grid: at least 2.5 pixels from their neighbours
    gaps = np.diff(np.r_[0.0, zeros, np.inf])
    ok = (gaps[:-1] >= 2.5 * step) & (gaps[1:] >= 2.5 * step)
    zeros = zeros[ok & (np.cumsum(~ok) == 0)]  # the leading run of resolvable rings
    assert len(zeros) >= 3
    for z in zeros:  # every predicted zero has a measured minimum within one Fourier pixel
        assert np.abs(minima - z).min() <= step, (z, minima)
    for m in minima[minima < zeros[-1] + step]:  # and no minimum where no zero is predicted
        assert np.abs(zeros - m).min() <= step, (m, zeros)


def test_astigmatic_ctf_follows_the_defocus_angle():
    box, pix = 64, 1.0
    ctf_u = ctf_rfft(box, pix, [20000.0], [20000.0], [0.0])[0]
    ctf_v = ctf_rfft(box, pix, [10000.0], [10000.0], [0.0])[0]
    at0 = ctf_rfft(box, pix, [20000.0], [10000.0], [0.0])[0]
    at90 = ctf_rfft(box, pix, [20000.0], [10000.0], [90.0])[0]
    # rfft2 layout: row 0 is the kx axis (angle 0), column 0 the ky axis (angle 90)
    assert np.allclose(at0[0, :], ctf_u[0, :]) and np.allclose(at0[:, 0], ctf_v[:, 0])
    assert np.allclose(at90[0, :], ctf_v[0, :]) and np.allclose(at90[:, 0], ctf_u[:, 0])
    assert not np.allclose(at0[0, 5:], ctf_v[0, 5:])
