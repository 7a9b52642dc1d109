"""Does the learned prior make the two half-references agree beyond the data? A check that needs
no ground truth (issue 11's honest-resolution signal).

Why this and not "the FSC RELION reports against the FSC of x~": RELION's gold-standard FSC in
3D auto-refine is *already* prior-free. ``MlOptimiserMpi::compareTwoHalves`` correlates the two
halves' downsampled back-projector averages (the data over the weights, before any M-step), not
the regularised maps (RELION 3.1-5.0; only gradient refinement uses the references). Measured on
a real refinement with the hook (denoiser "none", box 40 at 3.5 A/px): the FSC of the hook's
x~ = B/K crosses 0.143 at 21-24 A where RELION reported 28 A (1-1.6 shells finer: the soft
sphere below drops the solvent corners' noise), while the regularised half maps RELION writes
agree up to Nyquist (FSC 0.9 there at iteration 1: they are masked alike). So a prior cannot raise the reported FSC directly; it can
only do it through the E-step: when both halves' references carry the same invented features,
the images of each half align to them, and the data themselves start to agree where the
structure does not (model bias). That is how RED overestimates at low SNR (Kimanius et al. 2021,
section 3.3).

What the references hold beyond the data's resolution is the prior: with eq. (17), where the
half-map FSC is near 0, tau2 is near 0 and the reference tends to ``lambda f(x~)``. So the
signal is the FSC between the two halves' denoiser outputs f(x~1), f(x~2) (the hook writes them:
``ROOT_credgui_denoised.mrc``) against the FSC between their inputs x~1, x~2
(``ROOT_credgui_unreg.mrc``, the data alone): both by the one FSC (``metrics.fsc``, all maps
times the same soft sphere inside the box's inscribed sphere), crossings at 0.143
(``resolution_at``, Nyquist as the bound). It warns when lambda > 0 in that M-step and f's
crossing is more than ``max_shells`` (default 1, the benchmark's overestimation criterion)
Fourier shells finer than x~'s. Validated against the truth in bench/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from credgui.metrics.fsc import FSC_THRESHOLD, fsc, resolution_at
from credgui.metrics.masks import soft_sphere_mask

__all__ = ["PriorCheck", "prior_check", "prior_check_files", "prior_check_iteration", "MAX_SHELLS_AHEAD"]

MAX_SHELLS_AHEAD = 1.0  # the benchmark's overestimation criterion (issue 11): more than one shell


@dataclass(frozen=True)
class PriorCheck:
    """How far the denoised half maps agree beyond the data, for one M-step.

    ``fsc_prior`` = FSC(f(x~1), f(x~2)), ``fsc_data`` = FSC(x~1, x~2): shells 0..N//2 (float64).
    Resolutions in A (0.143 crossings; Nyquist when a curve never crosses). ``shells_ahead``: how
    many Fourier shells finer f's crossing is (``box * pixel_size / res``, difference).
    ``added_fsc``: the largest FSC f added over x~'s in a shell between the crossings (0 if none).
    ``lambda_``: the larger of the two halves' lambda in that M-step (None: not logged)."""

    fsc_prior: np.ndarray
    fsc_data: np.ndarray
    pixel_size: float
    box: int
    prior_resolution: float
    data_resolution: float
    shells_ahead: float
    added_fsc: float
    lambda_: float | None = None
    max_shells: float = MAX_SHELLS_AHEAD

    @property
    def warn(self) -> bool:
        """The prior acted (lambda > 0) and made the references agree beyond the data."""
        return bool(self.lambda_) and self.shells_ahead > self.max_shells

    def text(self) -> str:
        """One line for `credgui status` and the Monitor."""
        line = (f"data agree to {self.data_resolution:.1f} A, denoised halves to {self.prior_resolution:.1f} A "
                f"({self.shells_ahead:+.1f} shells)")
        if self.warn:
            line += ": the references share features the data do not; the reported resolution may be optimistic"
        elif not self.lambda_:
            line += ", lambda 0 (not used)"
        return line

    def summary(self) -> dict:
        """The stored form (benchmark results, JSON)."""
        return {
            "data_resolution": self.data_resolution,
            "prior_resolution": self.prior_resolution,
            "shells_ahead": round(self.shells_ahead, 3),
            "added_fsc": round(self.added_fsc, 4),
            "lambda": self.lambda_,
            "warn": self.warn,
        }


def _shell(res: float, pixel_size: float, box: int) -> float:
    return 0.0 if not math.isfinite(res) or res <= 0 else box * pixel_size / res


def prior_check(
    unreg_maps: tuple[np.ndarray, np.ndarray],
    denoised_maps: tuple[np.ndarray, np.ndarray],
    pixel_size: float,
    *,
    lambda_: float | None = None,
    max_shells: float = MAX_SHELLS_AHEAD,
) -> PriorCheck:
    """Compare FSC(f(x~1), f(x~2)) with FSC(x~1, x~2); all four maps cubic, same shape
    (z, y, x), ``pixel_size`` in A. ValueError on mismatched shapes."""
    shapes = {np.shape(m) for m in (*unreg_maps, *denoised_maps)}
    if len(shapes) != 1:
        raise ValueError(f"the maps have shapes {sorted(shapes)}: the boxes must match")
    box = int(np.shape(unreg_maps[0])[0])
    edge = 3.0
    mask = soft_sphere_mask(box, box / 2.0 - 1.0 - edge, edge)  # zero from radius box/2 - 1 on
    data = fsc(unreg_maps[0], unreg_maps[1], mask)
    prior = fsc(denoised_maps[0], denoised_maps[1], mask)
    r_data = resolution_at(data, FSC_THRESHOLD, pixel_size, box)
    r_prior = resolution_at(prior, FSC_THRESHOLD, pixel_size, box)
    s_data, s_prior = _shell(r_data, pixel_size, box), _shell(r_prior, pixel_size, box)
    lo, hi = max(int(math.floor(s_data)), 1), int(math.ceil(s_prior))
    added = float(np.max(prior[lo : hi + 1] - data[lo : hi + 1], initial=0.0)) if hi > lo else 0.0
    return PriorCheck(prior, data, float(pixel_size), box, r_prior, r_data, s_prior - s_data, max(added, 0.0),
                      lambda_, max_shells)


def prior_check_files(
    unreg_maps: tuple[str | Path, str | Path],
    denoised_maps: tuple[str | Path, str | Path],
    pixel_size: float,
    *,
    lambda_: float | None = None,
    max_shells: float = MAX_SHELLS_AHEAD,
) -> PriorCheck:
    """``prior_check`` of the hook's four MRC files of one M-step (``ROOT_credgui_unreg.mrc`` and
    ``ROOT_credgui_denoised.mrc`` of both halves). InputError naming a file that is missing or wrong."""
    from credgui.relion.mrc import read_mrc

    first = read_mrc(unreg_maps[0])
    maps = [first] + [read_mrc(p, expect_shape=first.shape) for p in (unreg_maps[1], *denoised_maps)]
    return prior_check((maps[0], maps[1]), (maps[2], maps[3]), pixel_size, lambda_=lambda_, max_shells=max_shells)


def prior_check_iteration(iteration) -> PriorCheck | None:
    """``prior_check`` of one ``relion.jobdir.Iteration`` (two halves, both with the hook's x~ and
    f(x~) written; lambda the larger of the two halves' logged values), else None: the final
    joined map, a run without a denoiser, or files not written yet. InputError on a bad file."""
    if getattr(iteration, "final", False):
        return None
    unreg, den = tuple(iteration.unreg_maps), tuple(iteration.denoised_maps)
    if len(unreg) != 2 or len(den) != 2 or not all(unreg) or not all(den):
        return None
    lambdas = [r.lambda_ for r in iteration.hook_records if r.lambda_ is not None]
    return prior_check_files(unreg, den, iteration.pixel_size, lambda_=max(lambdas) if lambdas else None)
