"""``credgui-reconstruct STAR``: the program RELION 3.1's ``--external_reconstruct`` runs.

lambda = 0 reproduces RELION's own M-step (eq. 11). Any error exits non-zero with one line on
stderr naming the file, so RELION stops instead of running on garbage. (CW-RED eq. 17 with a
denoiser: in progress, see the issue notes; a configured denoiser other than ``none`` is
refused rather than silently ignored.)
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from credgui.config import load_config
from credgui.errors import InputError
from credgui.recon.fourier import prior_weight
from credgui.recon.gridding import gridded_map
from credgui.relion.mrc import write_mrc_atomic
from credgui.relion.protocol import read_arrays, read_call


def unregularised_map(data, weight, ori_size: int, current_size: int, padding: float) -> np.ndarray:
    """x~ = B/K (eq. 17) in real space; K floored at 1/1000 of its mean, as RELION's skip_gridding."""
    from credgui.recon.fourier import max_radius2, rfft_radius2
    from credgui.recon.gridding import window_real

    inside = rfft_radius2(data.shape[0]) < max_radius2(current_size, padding)
    floor = 1e-3 * float(weight[inside].mean()) if inside.any() else 1.0
    x = np.where(inside, data / np.maximum(weight, max(floor, 1e-30)), 0).astype(np.complex64)
    return window_real(x, ori_size, padding, soft_edge=False)


def run(star: str | Path) -> dict:
    t0 = time.perf_counter()
    call = read_call(star)
    config = load_config(call.job_dir)
    if config.denoiser != "none":
        raise InputError(call.job_dir / "credgui.toml", f"denoiser {config.denoiser!r}: CW-RED mixing is not yet enabled in this build")
    data, weight = read_arrays(call)
    t1 = time.perf_counter()
    prior = prior_weight(weight, call.tau2, call.current_size, call.padding, call.tau2_fudge)
    vol = gridded_map(data, weight + prior, call.ori_size, call.current_size, call.padding)
    unreg = unregularised_map(data, weight, call.ori_size, call.current_size, call.padding)
    write_mrc_atomic(call.output_path("credgui_unreg.mrc"), unreg, config.pixel_size)
    t2 = time.perf_counter()
    n = call.ori_size
    if vol.shape != (n, n, n) or not np.isfinite(vol).all():
        raise InputError(call.result, "result is not a finite map of the original box; not written")
    write_mrc_atomic(call.result, vol)
    t3 = time.perf_counter()
    record = {
        "time": datetime.now(timezone.utc).isoformat(), "root": call.root, "iteration": call.iteration,
        "half": call.half, "class": call.class_number, "ori_size": n, "current_size": call.current_size,
        "padding": call.padding, "pixel_size": config.pixel_size, "nominal_resolution": None, "lambda": 0.0,
        "lambda_low_res": config.lambda_low_res, "lambda_high_res": config.lambda_high_res,
        "lambda_max": config.lambda_max, "denoiser": config.denoiser, "worker": False,
        "timings": {"read": t1 - t0, "gridding": t2 - t1, "write": t3 - t2, "total": t3 - t0},
        "status": "ok",
    }
    with open(call.job_dir / "credgui_hook.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: credgui-reconstruct RUN_itNNN_halfN_classNNN_external_reconstruct.star", file=sys.stderr)
        return 2
    try:
        run(argv[0])
    except InputError as exc:
        print(f"credgui-reconstruct: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # never leave RELION running on garbage
        print(f"credgui-reconstruct: error: {argv[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
