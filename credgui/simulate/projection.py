"""Orientations, Fourier-slice projection, CTF and origin shifts in RELION 3.1's conventions.

- Euler angles (rot, tilt, psi), degrees, ZYZ: ``A = Rz(psi) Ry(tilt) Rz(rot)`` as RELION's
  ``Euler_angles2matrix``; the projection of a volume V at A is ``p(x, y) = sum_z V(A^T (x, y, z))``
  (RELION's ``Projector::get2DFourierTransform`` samples the 3D transform at ``A^T (kx, ky, 0)``).
- Origin offsets (rlnOriginX/YAngst): the particle centre sits at the image centre *minus* the offset
  (``relion_project`` shifts its projections by ``-origin``; refinement shifts images by ``+origin``).
- CTF as RELION's ``CTF::getCTF``: ``-sin(pi lambda dF k^2 - pi/2 Cs lambda^3 k^4 - atan(Q/sqrt(1-Q^2)))``
  with ``dF = -((U+V)/2 + (U-V)/2 cos 2(theta - angle))``: positive at low frequency.
- The projector pads the volume twice, applies the trilinear gridding correction, and interpolates
  the 3D transform trilinearly within the Nyquist circle, like ``relion_project`` (``--pad 2``).

Arrays: volumes (z, y, x); image stacks (n, y, x); image transforms in rfft2 layout (n, N, N//2+1).
"""

from __future__ import annotations

import numpy as np

# --- orientations -------------------------------------------------------------------------------


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices uniformly distributed over SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` for arrays of angles in degrees -> (n, 3, 3)."""
    a, b, g = (np.deg2rad(np.atleast_1d(np.asarray(v, dtype=float))) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rot, tilt, psi) in degrees, tilt in [0, 180], rot and psi in (-180, 180]: the inverse of
    :func:`euler_to_matrix` (RELION's ``Euler_matrix2angles`` away from tilt 0 and 180)."""
    m = np.asarray(m, dtype=float).reshape(-1, 3, 3)
    abs_sb = np.hypot(m[:, 0, 2], m[:, 1, 2])
    tilt = np.arctan2(abs_sb, m[:, 2, 2])
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    rot = np.where(regular, np.arctan2(m[:, 2, 1], m[:, 2, 0]), 0.0)
    psi = np.where(
        regular,
        np.arctan2(m[:, 1, 2], -m[:, 0, 2]),
        # tilt 0 or 180: all in psi (RELION does the same)
        np.arctan2(-m[:, 1, 0], m[:, 0, 0]) * np.sign(m[:, 2, 2]),
    )
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


# --- CTF ------------------------------------------------------------------------------------------


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in A (RELION's formula)."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def ctf_rfft(
    box: int,
    pixel_size: float,
    defocus_u: np.ndarray,
    defocus_v: np.ndarray,
    defocus_angle: np.ndarray,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    bfactor: float = 0.0,
) -> np.ndarray:
    """CTFs in rfft2 layout, (n, box, box//2+1), as RELION 3.1 computes them (``CTF::getFftwImage``).

    Defoci in A (positive = underfocus), angle in degrees.
    """
    du = np.atleast_1d(np.asarray(defocus_u, dtype=float))[:, None, None]
    dv = np.atleast_1d(np.asarray(defocus_v, dtype=float))[:, None, None]
    az = np.deg2rad(np.atleast_1d(np.asarray(defocus_angle, dtype=float)))[:, None, None]
    lam = electron_wavelength(voltage_kv)
    k1 = np.pi * lam
    k2 = np.pi / 2 * cs_mm * 1e7 * lam**3
    k3 = np.arctan(amplitude_contrast / np.sqrt(1 - amplitude_contrast**2))
    ky = np.fft.fftfreq(box)[:, None] / pixel_size
    kx = np.fft.rfftfreq(box)[None, :] / pixel_size
    u2 = kx * kx + ky * ky
    ang = np.arctan2(ky, kx)
    deltaf = -((du + dv) / 2 + (du - dv) / 2 * np.cos(2 * (ang - az)))
    ctf = -np.sin(k1 * deltaf * u2 + k2 * u2 * u2 - k3)
    if bfactor:
        ctf = ctf * np.exp(-bfactor / 4 * u2)
    return ctf


# --- projector ------------------------------------------------------------------------------------


class FourierProjector:
    """Fourier-slice projector of one volume (RELION ``Projector`` semantics, padding 2, trilinear).

    ``project(matrices, origins_px, ctf)`` returns real images (n, N, N); ``project_rfft`` the
    transforms. Images are sums along z of the rotated volume (same scale as ``relion_project``).
    """

    def __init__(self, volume: np.ndarray, pad: int = 2) -> None:
        vol = np.asarray(volume, dtype=np.float64)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"need a cubic volume, got shape {vol.shape}")
        n = vol.shape[0]
        p = pad * n
        self.box, self.pad, self.padded = n, pad, p
        # gridding correction for trilinear interpolation: divide by sinc^2 per axis
        r = (np.arange(n) - n // 2) / p
        s2 = np.sinc(r) ** 2
        vol = vol / (s2[:, None, None] * s2[None, :, None] * s2[None, None, :])
        big = np.zeros((p, p, p))
        o = p // 2 - n // 2
        big[o : o + n, o : o + n, o : o + n] = vol
        f = np.fft.rfftn(np.fft.ifftshift(big))  # (p, p, p//2+1), centre at index 0
        # one zero column beyond Nyquist so trilinear corners never fall off the array
        self._f = np.concatenate([f, np.zeros((p, p, 1), f.dtype)], axis=2)
        ky = np.fft.fftfreq(n) * n
        kx = np.arange(n // 2 + 1, dtype=float)
        self._kx = np.broadcast_to(kx[None, :], (n, n // 2 + 1)).ravel()
        self._ky = np.broadcast_to(ky[:, None], (n, n // 2 + 1)).ravel()
        self._inside = self._kx**2 + self._ky**2 <= (n // 2) ** 2

    def project_rfft(self, matrices: np.ndarray) -> np.ndarray:
        """Central slices, (n, N, N//2+1) complex, image origin at index 0."""
        a = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        n, p = self.box, self.padded
        kx, ky = self._kx[self._inside], self._ky[self._inside]
        # 3D frequency (X, Y, Z) = A^T (kx, ky, 0), in padded-grid units
        fx = self.pad * (kx[None, :] * a[:, 0, 0, None] + ky[None, :] * a[:, 1, 0, None])
        fy = self.pad * (kx[None, :] * a[:, 0, 1, None] + ky[None, :] * a[:, 1, 1, None])
        fz = self.pad * (kx[None, :] * a[:, 0, 2, None] + ky[None, :] * a[:, 1, 2, None])
        neg = fx < 0
        fx = np.where(neg, -fx, fx)
        fy = np.where(neg, -fy, fy)
        fz = np.where(neg, -fz, fz)
        x0 = np.floor(fx).astype(np.intp)
        y0 = np.floor(fy).astype(np.intp)
        z0 = np.floor(fz).astype(np.intp)
        wx, wy, wz = fx - x0, fy - y0, fz - z0
        f = self._f
        nx = f.shape[2]
        flat = f.ravel()
        val = np.zeros(fx.shape, dtype=np.complex128)
        for dz in (0, 1):
            iz = (z0 + dz) % p
            w_z = wz if dz else 1 - wz
            for dy in (0, 1):
                iy = (y0 + dy) % p
                w_zy = w_z * (wy if dy else 1 - wy)
                base = (iz * p + iy) * nx
                val += w_zy * ((1 - wx) * flat[base + x0] + wx * flat[base + x0 + 1])
        val = np.where(neg, np.conj(val), val)
        out = np.zeros((a.shape[0], n * (n // 2 + 1)), dtype=np.complex128)
        out[:, self._inside] = val
        return out.reshape(a.shape[0], n, n // 2 + 1)

    def project(
        self,
        matrices: np.ndarray,
        origins_px: np.ndarray | None = None,
        ctf: np.ndarray | None = None,
    ) -> np.ndarray:
        """Projections (n, N, N) float64, optionally CTF-modulated (rfft2 layout CTFs) and with
        the particle centre moved to ``centre - origin`` (RELION's rlnOriginX/Y, in pixels)."""
        f = self.project_rfft(matrices)
        if ctf is not None:
            f *= ctf
        if origins_px is not None:
            f *= shift_phases(self.box, -np.asarray(origins_px, dtype=float).reshape(-1, 2))
        img = np.fft.irfft2(f, s=(self.box, self.box))
        return np.fft.fftshift(img, axes=(-2, -1))


def shift_phases(box: int, shifts_px: np.ndarray) -> np.ndarray:
    """Phase factors (n, N, N//2+1) that move image content by ``shifts_px`` = (dx, dy) pixels."""
    s = np.asarray(shifts_px, dtype=float).reshape(-1, 2)
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    return np.exp(-2j * np.pi * (kx * s[:, 0, None, None] + ky * s[:, 1, None, None]))
