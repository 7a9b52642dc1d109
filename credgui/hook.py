"""``credgui-reconstruct STAR``: the program RELION 3.1's ``--external_reconstruct`` runs.

Per call (one M-step, one half or the final joined map): read and validate RELION's STAR and
its three arrays; x~ = B/K (eq. 17) written as ``ROOT_credgui_unreg.mrc``; with a denoiser,
f(x~) (``ROOT_credgui_denoised.mrc``), lambda from the FSC's nominal resolution (section 4.3)
and eq. (17)'s numerator; RELION's Pipe-Menon gridding and windowing; the result checked and
written atomically; one JSON line in ``credgui_hook.jsonl``. lambda = 0 (or denoiser
``none``) reproduces RELION's own eq. (11).

Any error exits non-zero with one line on stderr naming the file, and no result is written, so
RELION stops instead of running on garbage. Nothing here waits without a timeout.

Order of the last steps: a stale result of an earlier attempt is removed first; the result is
written to a temp file, the log record appended (one ``write`` of one complete line), and only
then is the result renamed into place: a log that cannot be written (full disk) leaves no
result RELION would read. Everything, ``SystemExit`` from a plugin and Ctrl-C included, ends
in one stderr line, an ``error`` record (best effort) and a non-zero exit.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from credgui._io import append_line
from credgui.config import HookConfig, config_path, load_config
from credgui.errors import InputError
from credgui.recon.fourier import prior_weight
from credgui.recon.gridding import gridded_map, window_real
from credgui.recon.schedule import (
    driving_resolution,
    lambda_for_resolution,
    nominal_resolution,
    ramp_thresholds,
)
from credgui.recon.update import (
    cwred_numerator,
    denoise_map,
    denoiser_prior_weight,
    padded_fourier_from_map,
    unregularised_fourier,
)
from credgui.relion.layout import HOOK_LOG
from credgui.relion.mrc import write_mrc_atomic
from credgui.relion.protocol import (
    ExternalReconstructCall,
    find_pixel_size,
    find_relion_resolution,
    find_symmetry,
    read_arrays,
    read_call,
)

JSONL_NAME = HOOK_LOG  # the one name: credgui.relion.layout
CONFIG_RETRY_S = 2.0  # an editor saving credgui.toml non-atomically: re-read before failing


def _denoiser_options(config: HookConfig) -> dict[str, Any]:
    """The plugin's options: ``denoiser_options`` plus the top-level ``weights``/``device``."""
    from credgui.resources import resolve_resource

    options = dict(config.denoiser_options)
    if config.weights:  # "credgui:models/..." names a shipped file wherever credgui is now
        options.setdefault("weights", str(resolve_resource(config.weights)))
    if config.device and config.device != "auto":
        options.setdefault("device", config.device)
    return options


def _open_denoiser(call: ExternalReconstructCall, config: HookConfig) -> Any:
    """The configured denoiser (warm worker if ``worker_socket`` answers, else in-process;
    None for a plugin without a network). Opened after the arrays are read, so its loading
    time (torch import, weights) shows in the ``denoise`` stage."""
    from credgui.denoise.dispatch import open_denoiser
    from credgui.denoise.worker import UntrustedWorker, default_socket_path

    socket_path = config.worker_socket
    if socket_path == "default":
        try:
            socket_path = str(default_socket_path())
        except UntrustedWorker as exc:
            raise InputError(config_path(call.job_dir), f"worker_socket: {exc}") from None
    if socket_path and call.half == 2:  # a job on two GPUs runs a second worker for half 2
        half2 = Path(socket_path).with_name(Path(socket_path).name.replace(".sock", "_half2.sock"))
        if half2.exists():
            socket_path = str(half2)
    try:
        return open_denoiser(config.denoiser, _denoiser_options(config), socket_path=socket_path,
                             timeout_s=config.worker_timeout_s)
    except UntrustedWorker as exc:
        raise InputError(config_path(call.job_dir), f"worker_socket: {exc}") from None
    except (ValueError, ImportError, RuntimeError) as exc:
        raise InputError(config_path(call.job_dir), f"denoiser {config.denoiser!r}: {exc}") from None


def _pixel_size(call: ExternalReconstructCall, config: HookConfig, required: bool) -> float | None:
    """RELION's own ``_rlnPixelSize`` (4.0/5.0 hook STAR), else config.pixel_size, else the run's
    model/data STAR; an InputError if required and unknown."""
    if call.pixel_size:
        return float(call.pixel_size)
    if config.pixel_size:
        return float(config.pixel_size)
    found = find_pixel_size(call)
    if found is not None:
        return found[0]
    if required:
        raise InputError(
            config_path(call.job_dir),
            f"pixel_size is not set and no *_model.star or *_data.star in {call.job_dir} gives "
            f"one; the denoiser {config.denoiser!r} needs it: add pixel_size = <A/px>",
        )
    return None


def _symmetry(call: ExternalReconstructCall, config: HookConfig) -> str:
    """The run's point group: config.symmetry (written at launch from ``--sym``), else
    ``_rlnSymmetryGroup`` of the job's newest ``*_sampling.star``, else C1."""
    from credgui.recon.symmetry import normalise_group

    if config.symmetry:
        return normalise_group(config.symmetry)
    found = find_symmetry(call)
    if found is None:
        return "C1"
    try:
        return normalise_group(found[0])
    except ValueError as exc:
        raise InputError(found[1], f"_rlnSymmetryGroup: {exc}") from None


def run(star: str | Path) -> dict[str, Any]:
    """One hook call; returns the JSON record it appended. Raises InputError on bad input."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    call = read_call(star)
    _remove_stale(call.result)
    config = load_config(call.job_dir, retry_s=CONFIG_RETRY_S)
    use_denoiser = config.denoiser != "none"
    pixel_size = _pixel_size(call, config, required=use_denoiser)
    data, weight = read_arrays(call)
    t = time.perf_counter()
    timings["read"] = t - t0

    n, pad = call.ori_size, call.padding
    unreg_f = unregularised_fourier(data, weight, call.current_size, pad)
    unreg = window_real(unreg_f, n, pad, soft_edge=False)
    del unreg_f
    write_mrc_atomic(call.output_path("credgui_unreg.mrc"), unreg, pixel_size)
    timings["unreg"] = time.perf_counter() - t
    t = time.perf_counter()

    fsc_res = nominal_resolution(call.fsc, pixel_size, n) if pixel_size else None
    relion = find_relion_resolution(call) if use_denoiser else None
    driving = driving_resolution(fsc_res, relion[0] if relion else None, call.iteration, call.half)
    resolution = driving.resolution
    lam = 0.0
    low = high = None
    symmetry = None
    numerator = data
    denoiser = _open_denoiser(call, config) if use_denoiser else None
    if denoiser is not None:
        info = denoiser.info
        low, high = ramp_thresholds(config.lambda_low_res, config.lambda_high_res,
                                    info.lambda_low_res, info.lambda_high_res)
        lam = lambda_for_resolution(resolution, low, high, config.lambda_max)
        denoised = denoise_map(unreg, denoiser, pixel_size, info.voxel_size)
        if denoised.shape != (n, n, n) or not np.isfinite(denoised).all():
            raise InputError(call.output_path("credgui_denoised.mrc"), "denoised map is not finite")
        symmetry = _symmetry(call, config)
        if symmetry != "C1":  # RELION symmetrised B and K; f(x~) must follow the same group
            from credgui.recon.symmetry import symmetrise

            denoised = symmetrise(denoised, symmetry)
        write_mrc_atomic(call.output_path("credgui_denoised.mrc"), denoised, pixel_size)
        timings["denoise"] = time.perf_counter() - t
        t = time.perf_counter()
        if lam > 0:
            fx = padded_fourier_from_map(denoised, call.padded_size, pad)
            tau_inv = denoiser_prior_weight(data.shape, call.tau2, call.current_size, pad, call.tau2_fudge,
                                            config.minres_map)
            numerator = cwred_numerator(data, tau_inv, fx, lam)
            del fx, tau_inv
        timings["update"] = time.perf_counter() - t
        t = time.perf_counter()
    del unreg

    prior = prior_weight(weight, call.tau2, call.current_size, pad, call.tau2_fudge, config.minres_map)
    weight += prior
    del prior
    vol = gridded_map(numerator, weight, n, call.current_size, pad)
    del numerator, data, weight
    timings["gridding"] = time.perf_counter() - t
    t = time.perf_counter()
    if vol.shape != (n, n, n) or not np.isfinite(vol).all():
        raise InputError(call.result, "result is not a finite map of the original box; not written")
    record: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(), "root": call.root, "iteration": call.iteration,
        "half": call.half, "class": call.class_number, "ori_size": n, "current_size": call.current_size,
        "padding": pad, "pixel_size": pixel_size, "nominal_resolution": resolution,
        "fsc_resolution": driving.fsc_resolution, "relion_resolution": driving.relion_resolution,
        "resolution_source": driving.source, "lambda": lam,
        "lambda_low_res": low if low is not None else config.lambda_low_res,
        "lambda_high_res": high if high is not None else config.lambda_high_res,
        "lambda_max": config.lambda_max, "denoiser": config.denoiser, "symmetry": symmetry,
        "worker": bool(getattr(denoiser, "used_worker", False)),
        "worker_seconds": getattr(denoiser, "worker_seconds", None) or None,
        "timings": timings, "status": "ok",
    }

    def _log() -> None:  # the map is complete in its temp file; rename only once this is logged
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        try:
            _append_record(call.job_dir, record)
        except (OSError, ValueError) as exc:
            raise InputError(call.job_dir / JSONL_NAME, f"cannot append the call's record ({exc}); "
                                                        "result not written") from None

    write_mrc_atomic(call.result, vol, pixel_size, before_replace=_log)
    if not config.keep_inputs:
        for path in (call.data_real, call.data_imag, call.weight):
            path.unlink(missing_ok=True)
    return record


def _remove_stale(result: Path) -> None:
    """An earlier attempt's result must not pass for this call's if this one fails."""
    try:
        if result.is_symlink() or result.is_file():
            result.unlink()
    except OSError as exc:
        raise InputError(result, f"cannot remove the previous attempt's result ({exc})") from None


def _append_record(job_dir: Path, record: dict[str, Any]) -> None:
    """One complete JSON line in one write (credgui._io.append_line); NaN/inf refused."""
    append_line(job_dir / JSONL_NAME, json.dumps(record, allow_nan=False))


def _log_failure(star: str, message: str) -> None:
    """Best effort: an ``error`` line in the job's jsonl, so the GUI shows why RELION stopped."""
    try:
        path = Path(star)
        if not path.parent.is_dir():
            return
        name = path.name
        root = name[: -len("_external_reconstruct.star")] if name.endswith("_external_reconstruct.star") else path.stem
        _append_record(path.parent, {"time": datetime.now(timezone.utc).isoformat(), "root": root,
                                     "status": "error", "error": message})
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: credgui-reconstruct RUN_itNNN_halfN_classNNN_external_reconstruct.star", file=sys.stderr)
        return 2
    rc = 1
    try:
        run(argv[0])
    except InputError as exc:
        message = f"credgui-reconstruct: error: {exc}"
    except MemoryError:
        message = f"credgui-reconstruct: error: {argv[0]}: out of memory"
    except KeyboardInterrupt:
        message, rc = f"credgui-reconstruct: error: {argv[0]}: interrupted (Ctrl-C); no result written", 130
    except SystemExit as exc:  # a plugin's sys.exit() must not pass for success
        message = (f"credgui-reconstruct: error: {argv[0]}: the denoiser or a library called "
                   f"sys.exit({exc.code!r}) mid-call; no result written")
    except BaseException as exc:  # noqa: BLE001  (never leave RELION running on garbage)
        first = str(exc).splitlines()[0] if str(exc) else ""
        message = f"credgui-reconstruct: error: {argv[0]}: {type(exc).__name__}: {first}"
    else:
        return 0
    message = " ".join(message.split())
    try:
        print(message, file=sys.stderr)
    except (OSError, ValueError):
        pass
    _log_failure(argv[0], message)
    return rc


if __name__ == "__main__":
    sys.exit(main())
