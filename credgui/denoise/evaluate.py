"""The denoiser's confidence curve (paper Fig. 1c) and the lambda thresholds it suggests.

Single-pass ratio per map: ||f(x~) - x^||_p / ||x~ - x^||_p for p = 1, 2, with x^ the coarsened
ground truth (the training target); below 1 the denoiser moved x~ towards x^. Averaged per bin
of nominal resolution (the half-map FSC = 0.143 resolution of x~), on validation maps whose
families the network never saw.

Thresholds (why: the paper's fixed 10 and 4.5 A came from its own network's curve; another
network, box or voxel size has another curve): ``lambda_low_res`` = the coarsest resolution
from which the L2 ratio stays below ``drop`` (0.95) at every finer bin; ``lambda_high_res`` =
the coarsest resolution from which the L2 ratio stays within ``plateau`` (10 %) of the total
improvement of its best value. The hook ramps lambda from 0 at ``lambda_low_res`` to 1 at
``lambda_high_res``.
"""

from __future__ import annotations

import itertools
import json
import os
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


@dataclass(frozen=True)
class ConfidenceCurve:
    bins: tuple[CurveBin, ...]
    lambda_low_res: float | None
    lambda_high_res: float | None
    n_maps: int
    seconds: float
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bins"] = [asdict(b) for b in self.bins]
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
) -> list[CurveBin]:
    """Mean ratios per resolution bin [edges[i], edges[i+1]), empty bins left out, fine to coarse."""
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (resolution >= lo) & (resolution < hi)
        if sel.any():
            out.append(
                CurveBin(
                    float(lo),
                    float(hi),
                    float(resolution[sel].mean()),
                    int(sel.sum()),
                    float(l1[sel].mean()),
                    float(l2[sel].mean()),
                    float(l2[sel].std()),
                )
            )
    return out


def propose_thresholds(
    bins: Sequence[CurveBin], drop: float = 0.95, plateau: float = 0.1
) -> tuple[float | None, float | None]:
    """(lambda_low_res, lambda_high_res) in A from a curve (see the module docstring).

    None, None when the L2 ratio never drops below ``drop``. Each threshold is the coarse edge of
    its bin (the curve holds from there on, finer); high < low is enforced.
    """
    fine_to_coarse = sorted(bins, key=lambda b: b.resolution)
    ratios = [b.l2_ratio for b in fine_to_coarse]
    low_idx = None
    for i in range(len(ratios)):
        if all(r < drop for r in ratios[: i + 1]):
            low_idx = i
    if low_idx is None:
        return None, None
    best = min(ratios[: low_idx + 1])
    limit = best + plateau * (1.0 - best)
    high_idx = 0
    for i in range(low_idx + 1):
        if all(r <= limit for r in ratios[: i + 1]):
            high_idx = i
    low = fine_to_coarse[low_idx].hi
    high = fine_to_coarse[high_idx].hi
    if high >= low:
        high = (
            fine_to_coarse[high_idx].lo
            if fine_to_coarse[high_idx].lo < low
            else 0.75 * low
        )
    return float(low), float(high)


def evaluate_sets(
    denoiser,
    sets: Sequence,
    edges: Sequence[float] = DEFAULT_EDGES,
    sources: Sequence[str] = (),
) -> tuple[ConfidenceCurve, dict]:
    """Run ``denoiser`` (a callable on a 3-D map) on every map of the harvested/Gaussian sets;
    returns the curve and the per-map numbers (JSON-able)."""
    t0 = time.perf_counter()
    res, l1s, l2s = [], [], []
    for s in sets:
        for i in range(len(s)):
            x, y = s.inputs[i], s.targets[i]
            l1, l2 = map_ratios(denoiser(x), x, y)
            res.append(float(s.resolution[i]))
            l1s.append(l1)
            l2s.append(l2)
    r, a, b = np.array(res), np.array(l1s), np.array(l2s)
    finite = np.isfinite(r)
    bins = bin_ratios(r[finite], a[finite], b[finite], edges)
    low, high = propose_thresholds(bins)
    curve = ConfidenceCurve(
        tuple(bins), low, high, len(res), time.perf_counter() - t0, tuple(sources)
    )
    return curve, {"resolution": res, "l1_ratio": l1s, "l2_ratio": l2s}


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    ax.plot(x, [b.l2_ratio for b in curve.bins], "o-", label="L2")
    ax.plot(x, [b.l1_ratio for b in curve.bins], "s--", label="L1")
    ax.axhline(1.0, color="grey", lw=0.8)
    for val, name in ((curve.lambda_low_res, "low"), (curve.lambda_high_res, "high")):
        if val:
            ax.axvline(val, color="tab:red", lw=0.8, ls=":")
            ax.text(
                val, 1.02, f"λ {name} {val:g} Å", rotation=90, va="bottom", fontsize=7
            )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("nominal resolution (Å)")
    ax.set_ylabel("||f(x~) - x^|| / ||x~ - x^||")
    ax.set_title(title or "single-pass denoising ratio (validation)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
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
    "map_ratios",
    "plot_curve",
    "propose_thresholds",
    "store_in_model",
]
