"""FSC of a map against the ground truth: the one definition used by the demo's summary, the
benchmark and the GUI's "FSC vs truth" plot.

Convention (paper section 3.2): both maps times the data set's soft solvent mask when one is
given; crossings at 0.5 (the true resolution, equivalent to half maps at 0.143; Rosenthal &
Henderson 2003) and at 0.143, with ``resolution_at``'s bounds where the curve does not cross.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from credgui.metrics.fsc import fsc, fsc_to_resolution_axis, resolution_at

__all__ = ["FscVsTruth", "fsc_vs_truth", "curve_pairs"]


@dataclass(frozen=True)
class FscVsTruth:
    """FSC of one map against the truth. ``fsc``: shells 0..N//2 (float64); ``res_05`` and
    ``res_0143``: the crossings (A); ``correlation``: real-space correlation of the (masked) maps."""

    fsc: np.ndarray
    pixel_size: float
    box: int
    masked: bool
    res_05: float
    res_0143: float
    correlation: float

    @property
    def frequency(self) -> np.ndarray:
        """Spatial frequency (1/A) of each shell 0..N//2: ``i / (box * pixel_size)``."""
        return np.arange(self.fsc.size, dtype=np.float64) / (self.box * self.pixel_size)

    def summary(self) -> dict[str, Any]:
        """The stored form (demo summary, benchmark results): the two crossings (A) and the curve
        as [[resolution A, fsc], ...] from shell 1."""
        return {
            "fsc_truth_05_angst": self.res_05,
            "fsc_truth_0143_angst": self.res_0143,
            "fsc_truth_curve": curve_pairs(self.fsc, self.pixel_size, self.box),
        }


def curve_pairs(curve: np.ndarray, pixel_size: float, box: int) -> list[list[float]]:
    """[[resolution A, fsc rounded to 5 digits], ...] of an FSC over shells 0.., from shell 1."""
    curve = np.asarray(curve, dtype=np.float64)
    res = fsc_to_resolution_axis(curve.size, pixel_size, box)
    return [[float(r), round(float(f), 5)] for r, f in zip(res[1:], curve[1:])]


def fsc_vs_truth(volume: np.ndarray, truth: np.ndarray, pixel_size: float, mask: np.ndarray | None = None) -> FscVsTruth:
    """FSC of ``volume`` against ``truth`` (same cubic shape, z, y, x), both times ``mask`` when
    given; ``pixel_size`` in A. ValueError on mismatched shapes."""
    curve = fsc(volume, truth, mask)
    box = int(np.shape(truth)[0])
    a = np.asarray(volume, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)
        a, b = a * m, b * m
    return FscVsTruth(
        fsc=curve,
        pixel_size=float(pixel_size),
        box=box,
        masked=mask is not None,
        res_05=float(resolution_at(curve, 0.5, pixel_size, box)),
        res_0143=float(resolution_at(curve, 0.143, pixel_size, box)),
        correlation=float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
    )
