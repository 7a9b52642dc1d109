"""The benchmark's numbers for one finished refinement (paper section 3.2, Figs. 4 and 5).

Why here and not in credgui.metrics: these combine the metrics (``credgui.metrics``: FSC against
the truth, angular errors and their summary, crossings) with RELION's output files and the
simulated truth; every number is computed there, this module only picks the files and names.

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
  by image index and stack name (``credgui.metrics.angles.particle_key``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from credgui.errors import InputError
from credgui.metrics.angles import angle_summary, angular_errors
from credgui.metrics.fsc import fsc, resolution_at
from credgui.metrics.truth import curve_pairs, fsc_vs_truth

__all__ = [
    "overestimation",
    "overestimation_from_maps",
    "map_agreement",
    "run_metrics",
]


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
        "fsc_curve": curve_pairs(curve, pixel_size, box),
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
    out.update(fsc_vs_truth(rec, truth, px, mask).summary())
    reported = float(final.resolution)
    out["reported_angst"] = reported
    gold = final.fsc[:, 2] if final.fsc.size else np.zeros(0)
    out["halfmap_fsc_curve"] = curve_pairs(gold, px, box) if gold.size else []
    angst, shells = overestimation(reported, out["fsc_truth_05_angst"], box, px)
    out["overestimation_angst"] = angst
    out["overestimation_shells"] = shells
    # the same with both half maps masked (what a careful user would post-process)
    if len(final.half_maps) == 2:
        h1 = read_mrc(final.half_maps[0], expect_shape=truth.shape)
        h2 = read_mrc(final.half_maps[1], expect_shape=truth.shape)
        masked_half = fsc(h1, h2, mask)
        out["halfmap_masked_0143_angst"] = resolution_at(masked_half, 0.143, px, box)
        out["halfmap_masked_fsc_curve"] = curve_pairs(masked_half, px, box)
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
