"""The benchmark's numbers for one finished refinement (paper section 3.2, Figs. 4 and 5).

Why here and not in credgui.metrics: these combine the generic metrics (FSC, masks, angles) with
RELION's output files and the simulated truth; the pieces stay reusable on plain arrays.

Conventions:
- FSC against the truth: the final map and the ground truth, both times the data set's soft
  solvent mask (paper: "all maps were multiplied with a solvent mask with a smooth edge").
- RELION's reported resolution: ``_rlnCurrentResolution`` of the final ``run_model.star``
  (its gold-standard half-map FSC at 0.143, unmasked: what RELION prints as final resolution).
- True resolution: FSC(final map, truth) at 0.5, the criterion equivalent to half maps at 0.143
  (Rosenthal & Henderson 2003: FSC_true = sqrt(2 FSC / (1 + FSC)), 0.143 -> 0.5).
- Overestimation: how much better the reported resolution is than the true one, positive when
  RELION claims too much: ``true_A - reported_A`` in A, and ``shell(reported) - shell(true)``
  in Fourier shells (spectral index box * pixel_size / resolution, fractional).
- Angular error: angle of R_refined R_true^T (axis-angle, paper Fig. 5), per particle, matched
  by ``rlnImageName``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from credgui.errors import InputError
from credgui.metrics.angles import angular_error
from credgui.metrics.fsc import fsc, fsc_to_resolution_axis, resolution_at

__all__ = [
    "ANGLE_BIN_DEG",
    "overestimation",
    "overestimation_from_maps",
    "angular_errors",
    "angle_summary",
    "truth_fsc",
    "map_agreement",
    "run_metrics",
]

ANGLE_BIN_DEG = 0.5
"""Histogram bin width (degrees) of the stored angular-error distribution (0 to 180)."""


def _shell(resolution: float, box: int, pixel_size: float) -> float:
    """Fractional spectral index of a resolution (0 for an infinite resolution)."""
    return 0.0 if not math.isfinite(resolution) or resolution <= 0 else box * pixel_size / resolution


def overestimation(reported: float, true: float, box: int, pixel_size: float) -> tuple[float, float]:
    """(A, shells) by which ``reported`` claims a better resolution than ``true``; positive =
    overestimated. A: ``true - reported`` (inf when the truth FSC never reaches the threshold
    but RELION reports a finite value); shells: ``shell(reported) - shell(true)``."""
    shells = _shell(reported, box, pixel_size) - _shell(true, box, pixel_size)
    if math.isfinite(true) and math.isfinite(reported):
        angst = true - reported
    elif not math.isfinite(true) and math.isfinite(reported):
        angst = math.inf
    elif math.isfinite(true):
        angst = -math.inf
    else:
        angst = 0.0
    return float(angst), float(shells)


def overestimation_from_maps(
    half1: np.ndarray, half2: np.ndarray, truth: np.ndarray, pixel_size: float, mask: np.ndarray | None = None
) -> dict[str, float]:
    """The overestimation of a pair of half maps: their FSC at 0.143 against the FSC of their
    average with ``truth`` at 0.5 (both optionally masked)."""
    box = truth.shape[0]
    half = fsc(half1, half2, mask)
    full = fsc(0.5 * (np.asarray(half1) + np.asarray(half2)), truth, mask)
    reported = resolution_at(half, 0.143, pixel_size, box)
    true = resolution_at(full, 0.5, pixel_size, box)
    angst, shells = overestimation(reported, true, box, pixel_size)
    return {"reported_angst": reported, "true_angst": true, "overestimation_angst": angst,
            "overestimation_shells": shells}


def _read_angles(path: Path) -> dict[str, tuple[float, float, float]]:
    from credgui.relion.star import read_star

    blocks = read_star(path)
    block = blocks.get("particles") if "particles" in blocks else blocks.get("")
    if block is None:
        raise InputError(path, "no data_particles block")
    try:
        names = block["rlnImageName"]
        rot, tilt, psi = (block[k] for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    except KeyError as exc:
        raise InputError(path, f"no _{exc.args[0]} column") from None
    try:
        return {n.split("@", 1)[0].lstrip("0") + "@" + os.path.basename(n.split("@", 1)[-1]):
                (float(a), float(b), float(c)) for n, a, b, c in zip(names, rot, tilt, psi)}
    except ValueError:
        raise InputError(path, "non-numeric angle") from None


def angular_errors(refined_star: str | Path, true_star: str | Path) -> np.ndarray:
    """Per-particle angular error (degrees) between a RELION data STAR and the true poses,
    matched by image (index @ stack file name, so relative stack paths do not matter)."""
    refined = _read_angles(Path(refined_star))
    truth = _read_angles(Path(true_star))
    common = [k for k in refined if k in truth]
    if not common:
        raise InputError(refined_star, f"no particle matches one in {true_star} by rlnImageName")
    a = np.array([refined[k] for k in common])
    b = np.array([truth[k] for k in common])
    return np.asarray(angular_error(a[:, 0], a[:, 1], a[:, 2], b[:, 0], b[:, 1], b[:, 2]), dtype=np.float64)


def angle_summary(errors: np.ndarray) -> dict[str, Any]:
    """Median, mean, 90th percentile and a 0.5-degree histogram (0..180) of angular errors."""
    e = np.asarray(errors, dtype=np.float64)
    edges = np.arange(0.0, 180.0 + ANGLE_BIN_DEG / 2, ANGLE_BIN_DEG)
    counts, _ = np.histogram(e, bins=edges)
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    return {
        "n": int(e.size),
        "median_deg": float(np.median(e)),
        "mean_deg": float(np.mean(e)),
        "p90_deg": float(np.percentile(e, 90)),
        "fraction_over_10_deg": float(np.mean(e > 10.0)),
        "hist_bin_deg": ANGLE_BIN_DEG,
        "hist_counts": [int(c) for c in counts[:last]],  # trailing empty bins left out
    }


def _curve(curve: np.ndarray, pixel_size: float, box: int) -> list[list[float]]:
    res = fsc_to_resolution_axis(curve.size, pixel_size, box)
    return [[float(r), round(float(f), 5)] for r, f in zip(res[1:], curve[1:])]


def truth_fsc(rec: np.ndarray, truth: np.ndarray, mask: np.ndarray, pixel_size: float) -> dict[str, Any]:
    """FSC of a map with the truth inside the soft mask: 0.5 and 0.143 crossings, the curve."""
    box = truth.shape[0]
    curve = fsc(rec, truth, mask)
    return {
        "fsc_truth_05_angst": resolution_at(curve, 0.5, pixel_size, box),
        "fsc_truth_0143_angst": resolution_at(curve, 0.143, pixel_size, box),
        "fsc_truth_curve": _curve(curve, pixel_size, box),
    }


def map_agreement(map_a: np.ndarray, map_b: np.ndarray, pixel_size: float, up_to_angst: float | None,
                  mask: np.ndarray | None = None) -> dict[str, Any]:
    """How identical two maps are (relion vs none): FSC curve, its minimum over the shells up to
    ``up_to_angst`` (e.g. the reported resolution), the resolution where it first drops below
    0.99, and the real-space correlation."""
    box = map_a.shape[0]
    curve = fsc(map_a, map_b, mask)
    last = box // 2 if not up_to_angst or not math.isfinite(up_to_angst) else min(box // 2, int(math.floor(_shell(up_to_angst, box, pixel_size))))
    a = np.asarray(map_a, dtype=np.float64).ravel()
    b = np.asarray(map_b, dtype=np.float64).ravel()
    return {
        "fsc_min_to_resolution": float(curve[1:last + 1].min()) if last >= 1 else float("nan"),
        "up_to_angst": up_to_angst,
        "fsc_099_angst": resolution_at(curve, 0.99, pixel_size, box),
        "correlation": float(np.corrcoef(a, b)[0, 1]),
        "max_abs_diff_rel": float(np.abs(a - b).max() / (np.abs(a).max() or 1.0)),
        "fsc_curve": _curve(curve, pixel_size, box),
    }


def final_map(record: dict[str, Any]) -> np.ndarray:
    """A run's final map: RELION's joined map, else the average of the last half maps."""
    from credgui.relion.mrc import read_mrc

    if record.get("final_map"):
        return read_mrc(record["final_map"])
    h = record.get("final_half_maps") or []
    if len(h) != 2:
        raise InputError(record.get("job_dir"), "run record names no final map nor two half maps")
    return 0.5 * (read_mrc(h[0]) + read_mrc(h[1]))


def run_metrics(job_dir: str | Path, manifest) -> dict[str, Any]:
    """Everything the benchmark reports for one ended job whose final iteration exists.

    ``manifest``: the data set's ``credgui.simulate.Manifest`` (truth, mask, true poses).
    InputError (naming the file) when the job has no final iteration or a file is unreadable.
    """
    from credgui.jobs.watch import scan_job
    from credgui.relion.mrc import read_mrc

    job = Path(job_dir)
    state = scan_job(job)
    final = next((i for i in state.iterations if i.final), None)
    px = float(manifest.pixel_size)
    truth = read_mrc(manifest.ground_truth)
    box = truth.shape[0]
    mask = read_mrc(manifest.mask, expect_shape=truth.shape)
    out: dict[str, Any] = {"pixel_size": px, "box": box, "nyquist_angst": 2 * px}
    if final is not None and final.map is not None:
        rec = read_mrc(final.map, expect_shape=truth.shape)
        out.update(converged=True, final_map=str(final.map), final_half_maps=[str(h) for h in final.half_maps])
    else:
        # stopped by --auto_iter_max: RELION 3.1 writes no joined final iteration; the average of
        # the last iteration's half maps stands in (not converged, said so in the record)
        its = [i for i in state.iterations if not i.final and len(i.half_maps) == 2 and i.number > 0]
        if not its:
            raise InputError(job, f"no finished iteration with two half maps; status {state.status}")
        final = its[-1]
        rec = 0.5 * (read_mrc(final.half_maps[0], expect_shape=truth.shape)
                     + read_mrc(final.half_maps[1], expect_shape=truth.shape))
        out.update(converged=False, final_map=None, final_half_maps=[str(h) for h in final.half_maps])
    out.update(truth_fsc(rec, truth, mask, px))
    reported = float(final.resolution)
    out["reported_angst"] = reported
    gold = final.fsc[:, 2] if final.fsc.size else np.zeros(0)
    out["halfmap_fsc_curve"] = _curve(gold, px, box) if gold.size else []
    angst, shells = overestimation(reported, out["fsc_truth_05_angst"], box, px)
    out["overestimation_angst"] = angst
    out["overestimation_shells"] = shells
    # the same with both half maps masked (what a careful user would post-process)
    if len(final.half_maps) == 2:
        h1 = read_mrc(final.half_maps[0], expect_shape=truth.shape)
        h2 = read_mrc(final.half_maps[1], expect_shape=truth.shape)
        masked_half = fsc(h1, h2, mask)
        out["halfmap_masked_0143_angst"] = resolution_at(masked_half, 0.143, px, box)
        out["halfmap_masked_fsc_curve"] = _curve(masked_half, px, box)
    if final.data_star is None:
        raise InputError(job, f"no data STAR for iteration {final.number} (no angles to compare)")
    errors = angular_errors(final.data_star, manifest.true_poses_star)
    out["angular_error"] = angle_summary(errors)
    its = [i for i in state.iterations if not i.final]
    out["iterations"] = its[-1].number if its else 0
    out["data_star"] = str(final.data_star)
    out["per_iteration"] = [
        {
            "iteration": i.number,
            "resolution_angst": i.resolution,
            "angular_sampling_deg": i.angular_sampling,
            "lambda": sorted({r.lambda_ for r in i.hook_records if r.lambda_ is not None}),
            "nominal_resolution": sorted({r.nominal_resolution for r in i.hook_records if r.nominal_resolution is not None}),
        }
        for i in state.iterations
    ]
    return out
