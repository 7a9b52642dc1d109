"""Fourier-space resampling of real-space maps to another voxel size (same physical box): the
one Fourier crop/pad of credgui (the hook's denoiser grid, the simulator's fine-to-box step).

Why Fourier: a denoiser has a native voxel size; cropping (coarser) or zero-padding (finer)
the spectrum changes the sampling without interpolation blur, and the round trip down and up
returns the band-limited part of the map unchanged.
"""

from __future__ import annotations

import numpy as np

from credgui.metrics import fft as _fft


def resampled_box(box: int, pixel_size: float, voxel_size: float) -> int:
    """Even box that covers ``box * pixel_size`` A at ``voxel_size`` A/voxel (nearest even)."""
    if pixel_size <= 0 or voxel_size <= 0:
        raise ValueError(f"pixel sizes must be > 0, got {pixel_size} and {voxel_size}")
    return max(2, 2 * round(box * pixel_size / voxel_size / 2.0))


def resample_fourier(vol: np.ndarray, new_box: int, *, centred: bool = True) -> np.ndarray:
    """(N, N, N) real map (centred, origin at N//2) -> (M, M, M) float32 over the same physical box.

    ``centred`` False: the origin is voxel 0 on both grids (gemmi's density grid in
    ``simulate.model``): fine voxel ``k * N/M`` lands on voxel ``k`` for any box parity.

    The spectrum is cropped or zero-padded about the origin; the Nyquist planes of the smaller
    grid are dropped (they have no symmetric partner). Voxel values keep their scale (the map
    is not re-normalised by the voxel count), so a density keeps its height.
    """
    n = vol.shape[0]
    if vol.shape != (n, n, n):
        raise ValueError(f"expected a cubic map, got shape {vol.shape}")
    if new_box == n:
        return np.asarray(vol, dtype=np.float32).copy()
    small = min(n, new_box)
    h = small // 2 - 1 if small % 2 == 0 else small // 2  # keep |k| <= h on every axis
    real = np.asarray(vol, dtype=np.float32)
    shifted = np.fft.ifftshift(real) if centred else real
    f = _fft.rfftn(shifted)
    zf = np.r_[0 : h + 1, n - h : n]
    zt = np.r_[0 : h + 1, new_box - h : new_box]
    g = np.zeros((new_box, new_box, new_box // 2 + 1), dtype=np.complex64)
    g[np.ix_(zt, zt, np.arange(h + 1))] = f[np.ix_(zf, zf, np.arange(h + 1))]
    out = _fft.irfftn(g, new_box) * (float(new_box) / n) ** 3
    return (np.fft.fftshift(out) if centred else out).astype(np.float32)
