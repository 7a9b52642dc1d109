"""The denoiser's confidence curve (paper Fig. 1c) and the lambda thresholds it suggests.

Single-pass ratio per map: ||f(x~) - x^||_p / ||x~ - x^||_p for p = 1, 2, with x^ the coarsened
ground truth (the training target); below 1 the denoiser moved x~ towards x^. Averaged per bin
of nominal resolution (the half-map FSC = 0.143 resolution of x~), on validation maps whose
families the network never saw.

Two references: the coarsened truth x^ (the training target, eq. 18-19) and, when the maps
carry it, the ground truth itself, as in the paper's Fig. 1c. Against x^ the ratio is below 1
even at 20 A (the network removes the noise above the FSC cut-off, which x^ lacks); against the
ground truth it stays near 1 at low resolution, where the error is the detail that neither x~
nor f(x~) has, and drops once noise dominates the error. Thresholds come from the latter when
available: that is the curve the paper read its 10 and 4.5 A from.

Thresholds (why: the paper's fixed 10 and 4.5 A came from its own network's curve; another
network, box or voxel size has another curve): see ``propose_thresholds``. The hook ramps
lambda from 0 at ``lambda_low_res`` to 1 at ``lambda_high_res``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_EDGES = (2.8, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 40.0)
"""Bin edges of nominal resolution (A)."""


@dataclass(frozen=True)
class CurveBin:
    lo: float  # A (finer edge)
    hi: float  # A (coarser edge)
    resolution: float  # A, mean nominal resolution of the maps in the bin
    n: int
    l1_ratio: float
    l2_ratio: float
    l2_ratio_std: float
    l2_ratio_max: float | None = None  # the worst map of the bin
    amplitude: float | None = None  # mean <f, x^> / <x^, x^> (1 = calibrated)


@dataclass(frozen=True)
class ConfidenceCurve:
    """bins: ratios against the coarsened truth x^ (the training target); bins_truth: against
    the ground truth itself (paper Fig. 1c), when every map has it. threshold_basis: which one
    the thresholds come from ("ground_truth" when available, else "coarsened")."""

    bins: tuple[CurveBin, ...]
    lambda_low_res: float | None
    lambda_high_res: float | None
    n_maps: int
    seconds: float
    sources: tuple[str, ...] = ()
    bins_truth: tuple[CurveBin, ...] = ()
    threshold_basis: str = "coarsened"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bins"] = [asdict(b) for b in self.bins]
        d["bins_truth"] = [asdict(b) for b in self.bins_truth]
        d["sources"] = list(self.sources)
        return d


def map_ratios(
    denoised: np.ndarray, noisy: np.ndarray, target: np.ndarray
) -> tuple[float, float]:
    """(L1 ratio, L2 ratio) of one map: ||f(x~) - x^|| / ||x~ - x^||."""
    a = (denoised.astype(np.float64) - target).ravel()
    b = (noisy.astype(np.float64) - target).ravel()
    l1 = float(np.abs(a).sum() / max(np.abs(b).sum(), 1e-30))
    l2 = float(np.sqrt((a * a).sum() / max((b * b).sum(), 1e-30)))
    return l1, l2


def bin_ratios(
    resolution: np.ndarray,
    l1: np.ndarray,
    l2: np.ndarray,
    edges: Sequence[float] = DEFAULT_EDGES,
    amplitudes: np.ndarray | None = None,
) -> list[CurveBin]:
    """Mean ratios per resolution bin [edges[i], edges[i+1]), empty bins left out, fine to coarse."""
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (resolution >= lo) & (resolution < hi)
        if sel.any():
            amp = None
            if amplitudes is not None and np.isfinite(amplitudes[sel]).any():
                amp = float(np.nanmean(amplitudes[sel]))
            out.append(
                CurveBin(
                    float(lo),
                    float(hi),
                    float(resolution[sel].mean()),
                    int(sel.sum()),
                    float(l1[sel].mean()),
                    float(l2[sel].mean()),
                    float(l2[sel].std()),
                    float(l2[sel].max()),
                    amp,
                )
            )
    return out


def ramp_from_curve(
    bins: Sequence[CurveBin], worst: float = 0.9, plateau: float = 0.1, max_low: float | None = None,
) -> tuple[float | None, float | None]:
    """(lambda_low_res, lambda_high_res) in A such that wherever the ramp gives lambda > 0 the
    denoiser was measured to help every map, with margin.

    Scanning from fine to coarse, bins are accepted while their *worst* map's L2 ratio against
    x^ is below ``worst`` (0.9: a 10 % margin under 1); ``lambda_low_res`` is the coarse edge of
    the last accepted bin (lambda is 0 at and beyond it, so no map of a rejected bin gets the
    prior). ``lambda_high_res``: the coarsest accepted bin whose mean ratio is within
    ``plateau`` of the best accepted bin's improvement (full strength where the help has
    levelled off), at least one bin finer than lambda_low_res. None, None when even the finest
    bin fails. ``max_low`` clips lambda_low_res (the coarsest resolution trained).
    """
    fine_to_coarse = sorted(bins, key=lambda b: b.resolution)
    accepted: list[CurveBin] = []
    for b in fine_to_coarse:
        w = b.l2_ratio_max if b.l2_ratio_max is not None else b.l2_ratio
        if not w < worst:
            break
        accepted.append(b)
    if not accepted:
        return None, None
    low = float(accepted[-1].hi)
    if max_low is not None and low > max_low:
        low = float(max_low)
    best = min(b.l2_ratio for b in accepted)
    limit = best + plateau * (1.0 - best)
    good = [b for b in accepted if b.l2_ratio <= limit and b.resolution < low]
    high = float(max(b.resolution for b in good)) if good else float(accepted[0].resolution)
    if not high < low:
        high = 0.75 * low
    return low, high


def propose_thresholds(
    bins: Sequence[CurveBin],
    drop: float = 0.95,
    plateau: float = 0.1,
    max_low: float | None = None,
) -> tuple[float | None, float | None]:
    """(lambda_low_res, lambda_high_res) in A from a curve (see the module docstring).

    Scanning from coarse to fine: ``lambda_low_res`` is the mean resolution of the first bin
    whose L2 ratio is below ``drop`` and stays below it in the next finer bin (one noisy bin
    does not decide); ``lambda_high_res`` the first bin, finer than that, whose ratio is within
    ``plateau`` of the total improvement of the best bin finer than it. None, None when the ratio
    never drops clearly. ``max_low``: clip lambda_low_res to it (the coarsest resolution the
    network was trained for: beyond it the curve is extrapolation). high < low is enforced.
    """
    coarse_to_fine = sorted(bins, key=lambda b: -b.resolution)
    ratios = [b.l2_ratio for b in coarse_to_fine]
    n = len(ratios)
    low_idx = next(
        (
            i
            for i in range(n)
            if ratios[i] < drop and (i + 1 == n or ratios[i + 1] < drop)
        ),
        None,
    )
    if low_idx is None:
        return None, None
    low = coarse_to_fine[low_idx].resolution
    if max_low is not None and low > max_low:
        low = float(max_low)
    best = min(ratios[low_idx:])
    limit = best + plateau * (1.0 - best)
    high_idx = next(i for i in range(low_idx, n) if ratios[i] <= limit)
    high = coarse_to_fine[high_idx].resolution
    if high >= low:
        finer = [b.resolution for b in coarse_to_fine[high_idx:] if b.resolution < low]
        high = finer[0] if finer else 0.75 * low
    return float(low), float(high)


def amplitude(denoised: np.ndarray, target: np.ndarray) -> float:
    """The least-squares scale of f(x~) onto x^: <f, x^> / <x^, x^> (1 for a calibrated
    denoiser; below 1 it shrinks the map, above 1 it inflates it). Real-space inner products
    (Parseval: the same over the whole band in Fourier space)."""
    t = target.astype(np.float64).ravel()
    den = float(t @ t)
    return float(denoised.astype(np.float64).ravel() @ t / den) if den > 0 else float("nan")


def evaluate_sets(
    denoiser,
    sets: Sequence,
    edges: Sequence[float] = DEFAULT_EDGES,
    sources: Sequence[str] = (),
    max_low: float | None = None,
    voxel_size: float | None = None,
) -> tuple[ConfidenceCurve, dict]:
    """f(x~) of every map of the sets through the hook's own path
    (``recon.update.denoise_map``: resample to ``voxel_size``, standardise, ``denoiser``, undo),
    at each map's own sampling, and the single-pass ratios against x^ (and the truth).

    Returns the curve of all maps together (its thresholds: see ``propose_thresholds``) and a
    JSON-able dict: per-map numbers (ratios, amplitude, pixel size, box) and, per set, its own
    binned curve (``by_set``), so that Gaussian pairs and RELION maps can be told apart.
    """
    from credgui.recon.update import denoise_map

    t0 = time.perf_counter()
    res, l1s, l2s, which, t1s, t2s, amps, pix, boxes = [], [], [], [], [], [], [], [], []
    amps_in: list[float] = []
    for k, s in enumerate(sets):
        truths = getattr(s, "truths", None)
        for i in range(len(s)):
            x, y = s.inputs[i], s.targets[i]
            fx = denoise_map(x, denoiser, float(s.pixel_size[i]), voxel_size)
            l1, l2 = map_ratios(fx, x, y)
            t1, t2 = (
                map_ratios(fx, x, truths[i]) if truths is not None else (np.nan, np.nan)
            )
            res.append(float(s.resolution[i]))
            l1s.append(l1)
            l2s.append(l2)
            t1s.append(float(t1))
            t2s.append(float(t2))
            amps.append(amplitude(fx, y))
            amps_in.append(amplitude(fx, y) / amplitude(x, y))
            pix.append(float(s.pixel_size[i]))
            boxes.append(int(x.shape[0]))
            which.append(k)
    r, a, b, w = np.array(res), np.array(l1s), np.array(l2s), np.array(which)
    ta, tb = np.array(t1s), np.array(t2s)
    finite = np.isfinite(r)
    amp = np.array(amps)
    bins = bin_ratios(r[finite], a[finite], b[finite], edges, amp[finite])
    have_truth = bool(len(tb)) and bool(np.isfinite(tb).all())
    bins_truth = (
        bin_ratios(r[finite], ta[finite], tb[finite], edges) if have_truth else []
    )
    low, high = ramp_from_curve(bins, max_low=max_low)
    curve = ConfidenceCurve(
        tuple(bins),
        low,
        high,
        len(res),
        time.perf_counter() - t0,
        tuple(sources),
        tuple(bins_truth),
        "coarsened",
    )
    by_set = []
    for k in range(len(sets)):
        sel = finite & (w == k)
        by_set.append(
            {
                "source": sources[k] if k < len(sources) else str(k),
                "n_maps": int(sel.sum()),
                "bins": [asdict(x) for x in bin_ratios(r[sel], a[sel], b[sel], edges, amp[sel])],
                "bins_truth": [
                    asdict(x) for x in bin_ratios(r[sel], ta[sel], tb[sel], edges)
                ]
                if np.isfinite(tb[sel]).all()
                else [],
            }
        )
    per_map = {
        "resolution": res,
        "l1_ratio": l1s,
        "l2_ratio": l2s,
        "l1_ratio_truth": [v if np.isfinite(v) else None for v in t1s],
        "l2_ratio_truth": [v if np.isfinite(v) else None for v in t2s],
        "amplitude": amps,
        "amplitude_vs_input": amps_in,  # <f, x^> / <x~, x^>: f's scale relative to x~'s (issue 10's measure)
        "pixel_size": pix,
        "box": boxes,
        "set": which,
    }
    return curve, {"per_map": per_map, "by_set": by_set}


def plot_curve(path: Path, curve: ConfidenceCurve, title: str = "") -> bool:
    """PNG of the curve (matplotlib, when installed; False otherwise), written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    x = [b.resolution for b in curve.bins]
    ax.plot(x, [b.l2_ratio for b in curve.bins], "o-", label="L2 vs coarsened truth x^")
    ax.plot(x, [b.l1_ratio for b in curve.bins], "s--", label="L1 vs x^")
    if curve.bins_truth:
        xt = [b.resolution for b in curve.bins_truth]
        ax.plot(
            xt, [b.l2_ratio for b in curve.bins_truth], "^-", label="L2 vs ground truth"
        )
        ax.plot(
            xt, [b.l1_ratio for b in curve.bins_truth], "v:", label="L1 vs ground truth"
        )
    ax.axhline(1.0, color="grey", lw=0.8)
    for val, name in ((curve.lambda_low_res, "low"), (curve.lambda_high_res, "high")):
        if val:
            ax.axvline(val, color="tab:red", lw=0.8, ls=":")
            ax.text(
                val, 1.02, f"λ {name} {val:g} Å", rotation=90, va="bottom", fontsize=7
            )
    ax.set_xscale("log")
    ticks = [t for t in (3, 4, 5, 6, 8, 10, 12, 15, 20, 30) if min(x) * 0.9 <= t <= max(x) * 1.1]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("nominal resolution (Å)")
    ax.set_ylabel("||f(x~) - ref|| / ||x~ - ref||")
    ax.set_title(title or "single-pass denoising ratio (validation)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from credgui._io import atomic_open

    try:
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)
    return True


def store_in_model(weights: str | Path, curve: ConfidenceCurve) -> None:
    """Write the thresholds (and the curve, under training["confidence_curve"]) into the
    weights file, atomically; the hook uses them when its config sets none."""
    from credgui.denoise.unet import UNet3D, read_model_file, save_model

    raw = read_model_file(weights)
    model = UNet3D(raw["config"])
    model.load_state_dict(raw["state_dict"])
    training = dict(raw.get("training") or {})
    training["confidence_curve"] = curve.to_dict()
    meta = {
        "voxel_size": raw.get("voxel_size"),
        "box": raw.get("box"),
        "description": raw.get("description", ""),
        "lambda_low_res": curve.lambda_low_res,
        "lambda_high_res": curve.lambda_high_res,
        "training": training,
    }
    save_model(weights, model, meta)


__all__ = [
    "DEFAULT_EDGES",
    "ConfidenceCurve",
    "CurveBin",
    "bin_ratios",
    "evaluate_sets",
    "amplitude",
    "map_ratios",
    "plot_curve",
    "propose_thresholds",
    "ramp_from_curve",
    "store_in_model",
]
