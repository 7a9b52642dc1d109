"""Fourier filters of real-space maps (z, y, x): the one low-pass and the one per-shell filter.

Why one place: the simulator's initial model (a 30 A low-pass), the training target (the truth
times the half-map FSC, paper eq. 18-19) and coloured training noise all multiply a map's rfft
by a radial transfer; they share the shell grid of ``credgui.metrics.fsc``.
"""

from __future__ import annotations

import numpy as np

from credgui.metrics.fsc import shell_index, shell_radius

__all__ = ["fourier_filter", "shell_filter", "lowpass"]


def fourier_filter(volume: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``irfftn(rfftn(volume) * weight)`` for a cubic real map; ``weight`` in rfft layout
    (N, N, N//2+1), origin at [0,0,0]. The transform keeps numpy's dtype rules (float32 in,
    complex64 spectrum); the caller casts the result."""
    f = np.fft.rfftn(volume, axes=(0, 1, 2)) * weight
    return np.fft.irfftn(f, s=volume.shape, axes=(0, 1, 2))


def shell_filter(volume: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Multiply each Fourier shell (``shell_index``, rounded radius) of ``volume`` by
    ``transfer[shell]``; shells beyond the end of ``transfer`` get 0. Returns float64 (or the
    precision numpy's FFT keeps)."""
    shells = shell_index(volume.shape)
    w = np.zeros(max(int(shells.max()), len(transfer)) + 1)
    w[: len(transfer)] = np.asarray(transfer, dtype=np.float64)
    return fourier_filter(volume, w[shells])


def lowpass(volume: np.ndarray, pixel_size: float, resolution: float, edge_shells: float = 2.0) -> np.ndarray:
    """Low-pass a cubic map to ``resolution`` A with a raised-cosine edge ``edge_shells`` wide
    (centred on shell ``N * pixel_size / resolution``), float32."""
    n = volume.shape[0]
    shell = shell_radius(volume.shape)
    cut = n * pixel_size / resolution
    lo, hi = cut - edge_shells / 2, cut + edge_shells / 2
    w = np.clip((hi - shell) / (hi - lo), 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * w)
    return fourier_filter(volume, w).astype(np.float32)
