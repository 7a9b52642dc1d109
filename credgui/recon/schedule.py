"""CW-RED's confidence weighting (Kimanius et al. 2021, section 4.3): lambda from the nominal
resolution.

lambda = 0 at nominal resolutions worse than ``low_res`` (the denoiser barely helps there and
may invent features), ``lambda_max`` better than ``high_res``, linear in Angstrom between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from credgui.metrics.fsc import FSC_THRESHOLD, resolution_at

DEFAULT_LOW_RES = 10.0  # A, paper section 4.3
DEFAULT_HIGH_RES = 4.5  # A


def nominal_resolution(
    fsc: Sequence[float] | np.ndarray | None, pixel_size: float, ori_size: int,
    threshold: float = FSC_THRESHOLD,
) -> float | None:
    """Resolution (A) where the half-map FSC first drops below ``threshold`` (0.143).

    fsc: per unpadded shell 0..ori_size//2 (the STAR's ``_rlnGoldStandardFsc``). The crossing
    is interpolated linearly in shell index between the last shell at or above the threshold
    and the first below, then converted: resolution = ori_size * pixel_size / shell.
    None when there is no usable FSC (absent, empty, already below at shell 0-1) or it never
    drops below the threshold (no crossing to report; e.g. a full-box FSC of 1): the one crossing,
    ``credgui.metrics.fsc.resolution_at`` with ``no_crossing=None``.
    """
    if fsc is None:
        return None
    f = np.asarray(fsc, dtype=np.float64)
    if f.size < 3 or not np.isfinite(f).all():
        return None
    return resolution_at(f, threshold, pixel_size, ori_size, no_crossing=None)


@dataclass(frozen=True)
class DrivingResolution:
    """The nominal resolution that drives lambda, and why (the hook logs every field).

    resolution: A or None (lambda 0); fsc_resolution: the 0.143 crossing of the FSC RELION
    handed over; relion_resolution: RELION's own current resolution (its latest model STAR);
    source: "fsc", "relion", "first iteration" or "final map" or "unknown".
    """

    resolution: float | None
    fsc_resolution: float | None
    relion_resolution: float | None
    source: str


def driving_resolution(
    fsc_resolution: float | None, relion_resolution: float | None, iteration: int | None, half: int | None,
) -> DrivingResolution:
    """The worse (coarser) of the FSC's crossing and RELION's current resolution, with two rules.

    Why the worse one: the STAR's FSC can be optimistic (at iteration 1 both halves were aligned
    against one initial reference, so their FSC is not independent: 9.7 A where RELION says
    28 A in ``credgui demo``), and RELION's own number lags by an iteration; taking the coarser
    keeps the prior off until both say the map is good enough. Rules: iteration 1 (and 0) gets
    no resolution (lambda 0: no gold-standard FSC yet); the final joined map (half None) gets
    none either (lambda 0: the map users validate and deposit stays prior-free, paper section 5).
    Either number alone is used when the other is unknown.
    """
    if half is None:
        return DrivingResolution(None, fsc_resolution, relion_resolution, "final map")
    if iteration is not None and iteration <= 1:
        return DrivingResolution(None, fsc_resolution, relion_resolution, "first iteration")
    known = [(r, name) for r, name in ((fsc_resolution, "fsc"), (relion_resolution, "relion"))
             if r is not None and math.isfinite(r) and r > 0]
    if not known:
        return DrivingResolution(None, fsc_resolution, relion_resolution, "unknown")
    res, name = max(known)
    return DrivingResolution(float(res), fsc_resolution, relion_resolution, name)


def lambda_for_resolution(
    resolution: float | None, low_res: float = DEFAULT_LOW_RES, high_res: float = DEFAULT_HIGH_RES,
    lambda_max: float = 1.0,
) -> float:
    """lambda for a nominal resolution (A): 0 at ``low_res`` or worse, ``lambda_max`` at
    ``high_res`` or better, linear in A between; 0 when the resolution is unknown (None/NaN).

    ``low_res <= high_res`` (a degenerate ramp, e.g. while the GUI's spin boxes are being
    edited; the configuration itself refuses it) is a step at ``high_res``, not an error.
    """
    if resolution is None or not math.isfinite(resolution) or resolution <= 0:
        return 0.0
    if not low_res > high_res:
        return float(lambda_max) if resolution <= high_res else 0.0
    t = (low_res - resolution) / (low_res - high_res)
    return float(lambda_max * min(1.0, max(0.0, t)))


def ramp_thresholds(
    low_res: float | None, high_res: float | None, model_low: float | None = None,
    model_high: float | None = None,
) -> tuple[float, float]:
    """The ramp ends to use: the configuration's, else the denoiser's own, else 10 / 4.5 A."""
    low = low_res if low_res is not None else (model_low if model_low is not None else DEFAULT_LOW_RES)
    high = high_res if high_res is not None else (model_high if model_high is not None else DEFAULT_HIGH_RES)
    return float(low), float(high)
