"""Fourier shell correlation, shell indices and resolution crossings.

All maps are real-space numpy arrays in MRC order (z, y, x), cubic, with the origin of the
Fourier transform at [0, 0, 0] (``numpy.fft.rfftn`` layout, shape (N, N, N//2+1)). Shells are
the rounded radius in Fourier voxels, 0 .. N//2; shell ``i`` has spatial frequency
``i / (N * pixel_size)`` 1/A, i.e. resolution ``N * pixel_size / i`` A (RELION's
``_rlnSpectralIndex`` / ``_rlnAngstromResolution``).

Per-shell sums use one shell-index array and ``np.bincount``; there is no loop over shells.
This module is credgui's one shell grid (``shell_radius``/``shell_index``) and one FSC crossing
(``resolution_at``, the hook's ``recon.schedule.nominal_resolution`` included). Only numpy at
import: the hook imports it on every call (scipy.fft is imported by ``fsc`` itself).

References: van Heel & Schatz (2005) J. Struct. Biol. 151, 250, doi:10.1016/j.jsb.2005.05.009
(FSC); Rosenthal & Henderson (2003) J. Mol. Biol. 333, 721, doi:10.1016/j.jmb.2003.07.013
(the 0.143 threshold between independent half maps).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "FSC_THRESHOLD",
    "shell_radius",
    "shell_index",
    "rfft_hermitian_weight",
    "fsc",
    "resolution_at",
    "fsc_to_resolution_axis",
]

FSC_THRESHOLD = 0.143
"""Half-map FSC threshold of the nominal resolution (Rosenthal & Henderson 2003)."""


def _check_cubic(shape: tuple[int, ...], name: str = "map") -> int:
    if len(shape) != 3 or not (shape[0] == shape[1] == shape[2]) or shape[0] < 2:
        raise ValueError(f"{name} must be a cubic 3D array (z, y, x), got shape {tuple(shape)}")
    return int(shape[0])


def shell_radius(shape: tuple[int, int, int]) -> np.ndarray:
    """Fourier radius ``sqrt(kz^2 + ky^2 + kx^2)`` in Fourier voxels (float64) of every voxel of
    the rfft of a real map of ``shape`` (z, y, x): shape (N, N, N//2+1), origin at [0,0,0]."""
    n = _check_cubic(tuple(shape), "shape")
    k = np.fft.fftfreq(n) * n  # integer frequencies, full axes (z, y)
    kx = np.fft.rfftfreq(n) * n  # half axis (x)
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def shell_index(shape: tuple[int, int, int]) -> np.ndarray:
    """Shell of every voxel of the rfft of a real map of ``shape`` (z, y, x).

    Returns an int array of shape (N, N, N//2+1), rfft layout, origin at [0,0,0]: ``shell_radius``
    rounded to the nearest integer. Values run up to about ``sqrt(3) * N/2`` in the corners;
    FSC uses shells 0 .. N//2 only.
    """
    return np.rint(shell_radius(shape)).astype(np.int64)


def rfft_hermitian_weight(n: int) -> np.ndarray:
    """Weight of each rfft x column (length N//2+1) so that sums over the half space equal sums
    over the full Fourier space: 1 for kx = 0 and (N even) kx = N/2, 2 for the others, whose
    Hermitian mates at -kx the rfft leaves out."""
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def fsc(map1: np.ndarray, map2: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Fourier shell correlation of two real-space maps (z, y, x), optionally both multiplied by
    ``mask`` first (a soft mask in [0, 1] of the same shape).

    FSC(i) = Re(sum F1 F2*) / sqrt(sum |F1|^2 sum |F2|^2) over the voxels of shell ``i``,
    summed over the full (Hermitian) Fourier space. Returns float64 of length N//2+1, shells
    0..N//2. A shell where either map has no power gets FSC 0.
    """
    import scipy.fft  # not at import: the hook imports this module for the crossing

    a = np.asarray(map1)
    b = np.asarray(map2)
    # float32 maps are transformed in single precision (scipy.fft keeps the dtype: half the
    # memory at box 400); the per-shell sums are accumulated in float64 by bincount
    dtype = np.float32 if (a.dtype == np.float32 and b.dtype == np.float32) else np.float64
    a = a.astype(dtype, copy=False)
    b = b.astype(dtype, copy=False)
    n = _check_cubic(a.shape, "map1")
    if b.shape != a.shape:
        raise ValueError(f"map2 has shape {b.shape}, map1 has {a.shape}: they must match")
    if mask is not None:
        m = np.asarray(mask, dtype=dtype)
        if m.shape != a.shape:
            raise ValueError(f"mask has shape {m.shape}, the maps have {a.shape}: they must match")
        a = a * m
        b = b * m
    fa = scipy.fft.rfftn(a, axes=(0, 1, 2))
    fb = scipy.fft.rfftn(b, axes=(0, 1, 2))
    n_shells = n // 2 + 1
    # voxels beyond the last shell go to one overflow bin, dropped below (no boolean copies)
    idx = np.minimum(shell_index(a.shape), n_shells).ravel()
    weight = rfft_hermitian_weight(n).astype(dtype)[None, None, :]
    cross = (fa.real * fb.real + fa.imag * fb.imag) * weight
    pa = (fa.real**2 + fa.imag**2) * weight
    pb = (fb.real**2 + fb.imag**2) * weight
    cross = np.bincount(idx, weights=cross.ravel(), minlength=n_shells + 1)[:n_shells]
    pa = np.bincount(idx, weights=pa.ravel(), minlength=n_shells + 1)[:n_shells]
    pb = np.bincount(idx, weights=pb.ravel(), minlength=n_shells + 1)[:n_shells]
    denom = np.sqrt(pa * pb)
    out = np.zeros(n_shells)
    ok = denom > 0
    out[ok] = cross[ok] / denom[ok]
    return out


def fsc_to_resolution_axis(n_shells: int, pixel_size: float, box: int) -> np.ndarray:
    """Resolution in A of shells 0..n_shells-1: ``box * pixel_size / i``; shell 0 is ``inf``."""
    if pixel_size <= 0 or box <= 0:
        raise ValueError(f"pixel_size and box must be > 0, got {pixel_size} A and {box}")
    i = np.arange(n_shells, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(i > 0, box * pixel_size / np.maximum(i, 1e-300), np.inf)


def resolution_at(
    fsc: np.ndarray, threshold: float, pixel_size: float, box: int, *,
    no_crossing: Literal["bound"] | None = "bound",
) -> float | None:
    """Resolution (A) where ``fsc`` (shells 0..) first falls below ``threshold``.

    The search starts at shell 1 (shell 0, the mean, is ignored). With ``i`` the first shell
    >= 1 whose FSC is below the threshold, the crossing is interpolated linearly in spectral
    index between shells ``i-1`` and ``i``, and returned as ``box * pixel_size / index``.

    ``no_crossing``: what a curve without a crossing gives. ``"bound"`` (the metrics' choice): ``inf``
    when FSC is already below the threshold at shell 1 (no resolution measurable) and
    ``box * pixel_size / (len(fsc) - 1)`` (Nyquist for the full curve, 2 pixels) when the curve
    never falls below: a lower bound, not a measurement. ``None`` (the hook's choice: no
    resolution, so lambda 0): None in both cases.
    """
    if no_crossing not in ("bound", None):
        raise ValueError(f"no_crossing must be 'bound' or None, got {no_crossing!r}")
    curve = np.asarray(fsc, dtype=np.float64)
    if curve.ndim != 1 or curve.size < 2:
        raise ValueError(f"fsc must be a 1D curve of at least 2 shells, got shape {curve.shape}")
    if pixel_size <= 0 or box <= 0:
        raise ValueError(f"pixel_size and box must be > 0, got {pixel_size} A and {box}")
    below = np.flatnonzero(curve[1:] < threshold)
    if below.size == 0:
        return None if no_crossing is None else float(box * pixel_size / (curve.size - 1))
    i = int(below[0]) + 1
    if i == 1:
        return None if no_crossing is None else float("inf")
    hi, lo = curve[i - 1], curve[i]
    frac = (hi - threshold) / (hi - lo) if hi != lo else 0.0
    index = (i - 1) + frac
    return float(box * pixel_size / index)
