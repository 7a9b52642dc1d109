"""Fourier-grid geometry of RELION's padded reconstruction arrays.

All grids here are rfft layout, origin at [0, 0, 0], axes (z, y, x), shape (n, n, n//2+1).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def rfft_freqs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer frequencies along z, y (full axis, wrapped) and x (half axis) of an n-grid,
    broadcastable to (n, n, n//2+1)."""
    full = np.fft.fftfreq(n, 1.0 / n).astype(np.int64)
    half = np.arange(n // 2 + 1, dtype=np.int64)
    return full[:, None, None], full[None, :, None], half[None, None, :]


@lru_cache(maxsize=4)
def rfft_radius2(n: int) -> np.ndarray:
    """Squared integer radius |k|^2 of every voxel of an (n, n, n//2+1) rfft grid (int32).

    Cached and read-only: one hook call needs it for the same grid four times."""
    kz, ky, kx = (k.astype(np.int32) for k in rfft_freqs(n))  # 3 (n/2)^2 fits: no int64 temporaries
    r2 = kz * kz + ky * ky + kx * kx
    r2.flags.writeable = False
    return r2


def max_radius2(current_size: int, padding: float) -> int:
    """RELION's ``max_r2 = ROUND(r_max * pad)^2`` with ``r_max = current_size / 2``: voxels with
    ``|k|^2 < max_r2`` carry data (BackProjector::reconstruct)."""
    return int(_relion_round((current_size // 2) * padding)) ** 2


def unpadded_shell(radius2: np.ndarray, padding: float) -> np.ndarray:
    """Unpadded shell index ``ROUND(|k| / pad)`` of each padded-grid voxel: the index into tau2."""
    return _relion_round(np.sqrt(radius2.astype(np.float64)) / padding).astype(np.int32)


def _relion_round(x: np.ndarray | float) -> np.ndarray | float:
    """RELION's ROUND (half away from zero), not numpy's banker's rounding."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def tau2_from_fsc(
    fsc: np.ndarray, weight_shell_mean: np.ndarray, tau2_fudge: float, *, joined: bool = False
) -> np.ndarray:
    """RELION's FSC -> tau2 (eq. 12; BackProjector::updateSSNRarrays).

    fsc is clamped to [0.001, 0.999] (for the joined final map first sqrt(2 fsc / (fsc + 1)));
    SSNR = fudge * fsc / (1 - fsc); tau2 = SSNR * sigma2 with sigma2 = 1 / mean(pad^3 K) per
    shell, passed here as ``weight_shell_mean`` (the mean of pad^3 K; 0 where the shell is empty).
    """
    f = np.maximum(np.asarray(fsc, dtype=np.float64), 0.001)
    if joined:
        f = np.sqrt(2.0 * f / (f + 1.0))
    f = np.minimum(f, 0.999)
    ssnr = tau2_fudge * f / (1.0 - f)
    with np.errstate(divide="ignore"):
        sigma2 = np.where(weight_shell_mean > 1e-10, 1.0 / weight_shell_mean, 0.0)
    return ssnr * sigma2


def prior_weight(
    weight: np.ndarray, tau2: np.ndarray, current_size: int, padding: float, tau2_fudge: float,
    minres_map: int = 0,
) -> np.ndarray:
    """The Gaussian-prior term 1/tau2 that eq. (11) adds to K, per padded voxel (float32).

    Shells below ``minres_map`` get none (relion_refine's internal M-step; see HookConfig).

    RELION (BackProjector::reconstruct): 1 / (pad^3 * fudge * tau2[ROUND(|k|/pad)]) inside
    ``max_r2``; where tau2 is 0 there, 1 / (0.001 K) (a strong pull to zero); 0 outside.
    Computed through a table over the integer |k|^2 (no full-size float64 temporaries).
    """
    n = weight.shape[0]
    r2 = rfft_radius2(n)
    per_r2, empty_r2 = _prior_tables(np.asarray(tau2, dtype=np.float64), current_size, padding, tau2_fudge,
                                     int(r2.max()), minres_map)
    prior = per_r2[r2]
    empty = empty_r2[r2]
    if empty.any():
        sel = empty & (weight > 1e-20)
        prior[sel] = 1.0 / (0.001 * weight[sel])
    return prior


def _prior_tables(
    tau2: np.ndarray, current_size: int, padding: float, tau2_fudge: float, r2_max: int,
    minres_map: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(prior per integer |k|^2 (float32), whether that |k|^2 is an empty tau2 shell inside)."""
    r2 = np.arange(r2_max + 1)
    shells = np.minimum(unpadded_shell(r2, padding), len(tau2) - 1)
    inside = (r2 < max_radius2(current_size, padding)) & (unpadded_shell(r2, padding) >= minres_map)
    tau2_r = tau2[shells]
    per = np.zeros(r2.shape, dtype=np.float64)
    positive = inside & (tau2_r > 0)
    per[positive] = 1.0 / (padding**3 * tau2_fudge * tau2_r[positive])
    return per.astype(np.float32), inside & (tau2_r < 1e-20)
