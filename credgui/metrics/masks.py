"""Soft-edged solvent masks (as ``relion_mask_create``: threshold, extend, cosine edge).

Arrays in MRC order (z, y, x); masks are float32 in [0, 1]. One grow-and-edge algorithm, two
threshold rules with their own names: ``soft_mask_from_map`` (an absolute threshold, default 5 %
of the maximum: the simulated truth, the GUI) and ``soft_mask_sigma`` (mean + k std: the training
library).
"""

from __future__ import annotations

import numpy as np


def soft_mask_from_map(
    volume: np.ndarray,
    pixel_size: float,
    threshold: float | None = None,
    extend_px: float = 3.0,
    soft_edge_px: float = 5.0,
    *,
    lowpass_angst: float | None = None,
) -> np.ndarray:
    """Soft solvent mask of a map: 1 inside ``volume > threshold`` grown by ``extend_px`` voxels,
    then a raised-cosine fall-off to 0 over ``soft_edge_px`` voxels (distances are Euclidean).

    ``threshold`` None: 5 % of the map's maximum (after the optional low-pass), which suits
    noise-free maps such as a simulated ground truth; pass one for noisy reconstructions.
    ``lowpass_angst``: Gaussian-smooth the map to about this resolution before thresholding.
    ``pixel_size`` (A) is used only by ``lowpass_angst``.
    Raises ValueError when the map is not 3D or nothing is above the threshold.
    """
    from scipy import ndimage

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"need a 3D map, got shape {vol.shape}")
    if extend_px < 0 or soft_edge_px < 0:
        raise ValueError("extend_px and soft_edge_px must be >= 0")
    if lowpass_angst:
        # Gaussian whose transfer is 0.5 at 1/lowpass: sigma = sqrt(ln 2 / 2) / pi * res
        sigma = 0.187 * lowpass_angst / pixel_size
        vol = ndimage.gaussian_filter(vol, sigma, mode="wrap")
    if threshold is None:
        threshold = 0.05 * float(vol.max())
    inside = vol > threshold
    if not inside.any():
        raise ValueError(f"no voxel above the mask threshold {threshold:g}")
    return _extend_with_cosine_edge(inside, extend_px, soft_edge_px)


def soft_mask_sigma(
    volume: np.ndarray, *, threshold_sigma: float = 1.0, extend_px: float = 3.0, soft_edge_px: float = 4.0
) -> np.ndarray:
    """Soft solvent mask of a noise-free map at a threshold relative to its own spread: inside
    where the map, smoothed by a 1-voxel Gaussian, exceeds mean + ``threshold_sigma`` * std; then
    grown and edged as ``soft_mask_from_map``. Why a second threshold rule: the training library's
    maps have arbitrary scale and background, where 5 % of the maximum is no fixed fraction of the
    molecule. Nothing above the threshold: the whole box (1 everywhere), not an error, so one odd
    map does not stop training.
    """
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(volume).astype(np.float32), 1.0)
    inside = smooth > smooth.mean() + threshold_sigma * smooth.std()
    if not inside.any():
        return np.ones(smooth.shape, dtype=np.float32)
    return _extend_with_cosine_edge(inside, extend_px, soft_edge_px)


def _extend_with_cosine_edge(inside: np.ndarray, extend_px: float, soft_edge_px: float) -> np.ndarray:
    """1 within ``extend_px`` voxels (Euclidean) of ``inside``, then a raised cosine to 0 over
    ``soft_edge_px`` voxels; float32."""
    from scipy import ndimage

    # distance (voxels) of every outside voxel to the nearest inside voxel
    dist = ndimage.distance_transform_edt(~inside)
    mask = np.zeros(inside.shape, dtype=np.float64)
    mask[dist <= extend_px] = 1.0
    if soft_edge_px > 0:
        edge = (dist > extend_px) & (dist < extend_px + soft_edge_px)
        mask[edge] = 0.5 + 0.5 * np.cos(np.pi * (dist[edge] - extend_px) / soft_edge_px)
    return mask.astype(np.float32)


def soft_sphere_mask(box: int, radius_px: float, soft_edge_px: float = 5.0) -> np.ndarray:
    """Spherical mask centred at voxel ``box//2``: 1 within ``radius_px``, cosine edge outside."""
    c = box // 2
    z, y, x = np.ogrid[:box, :box, :box]
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    mask = (r <= radius_px).astype(np.float64)
    if soft_edge_px > 0:
        edge = (r > radius_px) & (r < radius_px + soft_edge_px)
        mask[edge] = 0.5 + 0.5 * np.cos(np.pi * (r[edge] - radius_px) / soft_edge_px)
    return mask.astype(np.float32)
