"""The M-step updates: RELION's eq. (11) and CW-RED's eq. (17) (Kimanius et al. 2021).

    eq. (11):  x = B / (K + tau^-2)
    eq. (17):  x = (B + lambda F[f(x~)] tau^-2) / (K + tau^-2),   x~ = B / K

All Fourier arrays: (P, P, P//2+1) rfft layout, origin [0,0,0], axes (z, y, x), P = round(pad *
ori). Real-space maps: (ori, ori, ori), centred (origin at index ori//2), float32. tau^-2 is
RELION's prior term 1 / (pad^3 fudge tau2[ROUND(|k| / pad)]) (``fourier.prior_weight``); the
division is done by the same Pipe-Menon gridding as RELION's (``gridding.gridded_map``), so the
denominator (K + tau^-2) is exactly RELION's and lambda = 0 reproduces RELION.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from credgui.metrics import fft as _fft
from credgui.recon.fourier import max_radius2, rfft_radius2, unpadded_shell
from credgui.recon.gridding import sinc2_correction
from credgui.metrics.resample import resample_fourier, resampled_box


def unregularised_fourier(data: np.ndarray, weight: np.ndarray, current_size: int, padding: float) -> np.ndarray:
    """x~ = B / K on the padded grid (eq. 17), complex64; zero outside RELION's max_r2.

    K is floored at 1/1000 of its mean over the data region (as RELION's skip_gridding floor)
    so empty voxels do not explode.
    """
    inside = rfft_radius2(data.shape[0]) < max_radius2(current_size, padding)
    floor = 1e-3 * float(weight.mean(where=inside, dtype=np.float64)) if inside.any() else 1.0
    out = np.divide(data, np.maximum(weight, np.float32(max(floor, 1e-30))), dtype=np.complex64)
    out[~inside] = 0
    return out


def padded_fourier_from_map(vol: np.ndarray, padded_size: int, padding: float) -> np.ndarray:
    """The inverse of ``window_real(..., soft_edge=False)`` for a map supported in the box:
    redo the sinc^2 gridding correction, undo RELION's ori^2 scale, zero-pad to P, rfftn.

    Why this exact inverse: F[f(x~)] must sit on the same grid and scale as B / K, so that
    f = identity gives back x~ and eq. (17) mixes like with like.
    """
    ori = vol.shape[0]
    real = np.asarray(vol, dtype=np.float32) * sinc2_correction(ori, padding) / np.float32(ori**2)
    return _fft.rfftn_padded(real, padded_size)


def denoiser_prior_weight(
    shape: tuple[int, int, int], tau2: np.ndarray, current_size: int, padding: float, tau2_fudge: float,
    minres_map: int = 0,
) -> np.ndarray:
    """tau^-2 for eq. (17)'s numerator: 1 / (pad^3 fudge tau2) where tau2 > 0 inside max_r2, else 0.

    Unlike the denominator's prior (``fourier.prior_weight``), shells with tau2 = 0 get no
    denoiser term: there RELION pulls to zero, and so does eq. (17) with tau^-2 -> the floor.
    float32, (P, P, P//2+1).
    """
    r2 = rfft_radius2(shape[0])
    r = np.arange(int(r2.max()) + 1)
    tau2 = np.asarray(tau2, dtype=np.float64)
    shells = np.minimum(unpadded_shell(r, padding), len(tau2) - 1)
    per_r2 = np.zeros(r.shape, dtype=np.float64)
    ok = (r < max_radius2(current_size, padding)) & (tau2[shells] > 0)
    ok &= unpadded_shell(r, padding) >= minres_map  # no prior there, so no denoiser term either
    per_r2[ok] = 1.0 / (padding**3 * tau2_fudge * tau2[shells][ok])
    return per_r2.astype(np.float32)[r2]


def cwred_numerator(data: np.ndarray, denoiser_prior: np.ndarray, denoised_fourier: np.ndarray, lam: float) -> np.ndarray:
    """Eq. (17)'s numerator B + lambda tau^-2 F[f(x~)] (complex64). lambda = 0 returns B itself."""
    if lam == 0:
        return data
    return (data + np.float32(lam) * denoiser_prior * denoised_fourier).astype(np.complex64)


def cwred_closed_form(
    data: np.ndarray, weight: np.ndarray, prior: np.ndarray, denoiser_prior: np.ndarray,
    denoised_fourier: np.ndarray, lam: float,
) -> np.ndarray:
    """Eq. (17) voxel by voxel without gridding: (B + lambda tau^-2 F) / (K + tau^-2).

    For tests and reasoning (the hook divides through ``gridded_map`` instead). Zero where the
    denominator is zero.
    """
    num = cwred_numerator(data, denoiser_prior, denoised_fourier, lam)
    den = weight + prior
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0).astype(np.complex64)


Denoise = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class NetworkGrid:
    """How a map at its own sampling was put on the denoiser's grid (``to_network``), so that
    ``from_network`` can undo it and other maps (a training target) can follow the same path.

    box: the map's box (voxels); net_box: the box on the network's grid (even, ``resampled_box``);
    mean, std: x~'s statistics on the network grid (the standardisation, paper section 3.1).
    """

    box: int
    net_box: int
    mean: float
    std: float

    def apply(self, vol: np.ndarray) -> np.ndarray:
        """Another map (e.g. the target x^ of x~) onto the same grid with x~'s standardisation."""
        x = np.asarray(vol, dtype=np.float32)
        if self.net_box != self.box:
            x = resample_fourier(x, self.net_box)
        return ((x - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)


def to_network(vol: np.ndarray, pixel_size: float | None, voxel_size: float | None) -> tuple[np.ndarray, NetworkGrid]:
    """x~ (N, N, N) at ``pixel_size`` -> the standardised map the network sees, (M, M, M) at
    ``voxel_size`` (Fourier crop/pad, even box), and the grid to undo it.

    The one preprocessing path: the hook, training pairs, harvesting and evaluation all go
    through it, so the network is trained and measured on exactly what it is fed in a refinement.
    Standardised after resampling, on the grid the network sees (coarser sampling low-passes and
    lowers the std). std = 0 (a constant map) gives std 1 so ``apply`` stays finite.
    """
    n = vol.shape[0]
    x = np.asarray(vol, dtype=np.float32)
    box = n
    if voxel_size and pixel_size and abs(voxel_size - pixel_size) > 1e-3 * pixel_size:
        box = resampled_box(n, pixel_size, voxel_size)
        x = resample_fourier(x, box)
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    if not np.isfinite(std) or std <= 0:
        std = 0.0
    grid = NetworkGrid(n, box, mean, std if std > 0 else 1.0)
    z = ((x - np.float32(mean)) / np.float32(grid.std)).astype(np.float32)
    return (z if std > 0 else np.zeros_like(z)), grid


def from_network(y: np.ndarray, grid: NetworkGrid) -> np.ndarray:
    """The network's output back to the map's own units and sampling (inverse of ``to_network``)."""
    y = np.asarray(y, dtype=np.float32) * np.float32(grid.std) + np.float32(grid.mean)
    if grid.net_box != grid.box:
        y = resample_fourier(y, grid.box)
    return y.astype(np.float32)


def denoise_map(vol: np.ndarray, denoiser: Denoise, pixel_size: float | None, voxel_size: float | None) -> np.ndarray:
    """f(x~) at the map's own sampling (section 3.1): ``to_network`` (resample to the
    denoiser's voxel size, standardise), denoise, ``from_network``. (N, N, N) float32 in and out.

    A constant map (std 0) is returned as its mean: nothing to denoise.
    """
    z, grid = to_network(vol, pixel_size, voxel_size)
    x = np.asarray(vol, dtype=np.float32)
    if not float(x.std(dtype=np.float64)) > 0 or not np.any(z):
        return np.full_like(x, float(x.mean(dtype=np.float64)))
    y = np.asarray(denoiser(z), dtype=np.float32)
    if y.shape != z.shape:
        raise ValueError(f"the denoiser returned shape {y.shape} for input {z.shape}")
    if not np.isfinite(y).all():
        raise ValueError("the denoiser returned NaN or infinite values")
    return from_network(y, grid)
