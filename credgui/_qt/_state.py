"""Read-only views the widgets need of ``credgui.jobs.watch.JobState`` / ``Iteration``.

One place that knows the field names of the job-control core, so the widgets do not. No Qt here,
no maths: only attribute access and path bookkeeping.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from credgui.relion.layout import HOOK_LOG

# Map kinds shown in the maps panel, in grid order: (key, layer label).
MAP_KINDS: tuple[tuple[str, str], ...] = (
    ("half1_unreg", "half1 x~"),
    ("half2_unreg", "half2 x~"),
    ("half1_denoised", "half1 f(x~)"),
    ("half2_denoised", "half2 f(x~)"),
    ("half1_reg", "half1 regularised"),
    ("half2_reg", "half2 regularised"),
    ("final_unreg", "joined x~ (final)"),
    ("final_denoised", "joined f(x~) (final)"),
    ("final_map", "final map"),
    ("ground_truth", "ground truth"),
)
MAP_LABELS = dict(MAP_KINDS)


def _first(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if hasattr(obj, name):
            value = getattr(obj, name)
            if value is not None:
                return value
    return default


def _pair(obj: Any, *names: str) -> tuple[Path | None, Path | None]:
    """A per-half pair of paths, whatever its container: (h1, h2) tuple, dict {1: p, 2: p}."""
    value = _first(obj, *names)
    if value is None:
        return (None, None)
    if isinstance(value, dict):
        h1 = value.get(1, value.get("half1"))
        h2 = value.get(2, value.get("half2"))
    else:
        seq = list(value) + [None, None]
        h1, h2 = seq[0], seq[1]
    return (Path(h1) if h1 else None, Path(h2) if h2 else None)


def iteration_maps(it: Any) -> dict[str, Path]:
    """Map kind -> path of the maps that exist on disk for one iteration.

    The final joined iteration (``it.final``) has the unfiltered half maps, one joined x~ /
    f(x~) (the hook's single call on all data) and RELION's final map.
    """
    out: dict[str, Path] = {}
    if getattr(it, "final", False):
        for kind, value in (
            ("final_unreg", _pair(it, "unreg_maps", "unreg")[0]),
            ("final_denoised", _pair(it, "denoised_maps", "denoised")[0]),
            ("final_map", getattr(it, "map", None)),
        ):
            if value is not None and Path(value).is_file():
                out[kind] = Path(value)
        for half, path in zip((1, 2), _pair(it, "half_maps")):
            if path is not None and path.is_file():
                out[f"half{half}_reg"] = path
        return out
    for prefix, names in (
        ("unreg", ("unreg_maps", "unreg")),
        ("denoised", ("denoised_maps", "denoised")),
        ("reg", ("half_maps", "half_map_paths", "maps", "half_map")),
    ):
        for half, path in zip((1, 2), _pair(it, *names)):
            if path is not None and path.is_file():
                out[f"half{half}_{prefix}"] = path
    return out


def expected_kinds(job_dir: Path | None) -> set[str]:
    """Map kinds a job's iterations will have (besides those already on disk): x~ when the job
    runs credgui's hook, f(x~) when its denoiser is not ``none``. The maps panel makes their
    layers early (napari takes ~0.25 s of UI thread per new layer under software OpenGL), so a
    running job never adds a layer mid-run."""
    if job_dir is None:
        return set()
    job_dir = Path(job_dir)
    kinds: set[str] = set()
    toml = job_dir / "credgui.toml"
    if toml.is_file() or (job_dir / HOOK_LOG).is_file():
        kinds |= {"half1_unreg", "half2_unreg"}
    if toml.is_file():
        try:
            from credgui.config import parse_config

            if parse_config(toml).denoiser != "none":
                kinds |= {"half1_denoised", "half2_denoised"}
        except Exception:  # noqa: BLE001 (a broken credgui.toml is reported by the hook itself)
            pass
    return kinds


def iteration_number(it: Any) -> int:
    return int(_first(it, "number", "iteration", default=0))


def iteration_resolution(it: Any) -> float | None:
    value = _first(it, "resolution", "resolution_A", "current_resolution")
    return None if value is None else float(value)


def iteration_sampling(it: Any) -> float | None:
    value = _first(it, "angular_sampling", "angular_sampling_deg", "sampling_deg")
    return None if value is None else float(value)


def iteration_timestamp(it: Any) -> float | None:
    value = _first(it, "timestamp", "time", "mtime")
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def hook_records(it: Any) -> list[dict[str, Any]]:
    """The hook's calls of one iteration as the dicts of credgui_hook.jsonl (DEVELOPING.md)."""
    out = []
    for r in _first(it, "hook_records", "hook", default=()) or ():
        if isinstance(r, dict):
            out.append(r)
        else:  # credgui.relion.jobdir.HookRecord: ``raw`` is the line as written
            d = dict(getattr(r, "raw", None) or {})
            for key, attr in (("iteration", "iteration"), ("half", "half"), ("status", "status"),
                              ("error", "error"), ("nominal_resolution", "nominal_resolution"),
                              ("lambda", "lambda_"), ("timings", "timings")):
                if key not in d and getattr(r, attr, None) is not None:
                    d[key] = getattr(r, attr)
            out.append(d)
    return out


@dataclass(frozen=True)
class FscCurve:
    """Half-map FSC of one iteration: spatial frequency (1/A) and FSC, shell 0 dropped.

    ``shells_fsc`` is the curve over shells 0.. (as ``credgui.metrics.fsc.resolution_at`` wants)
    and ``box_angstrom`` = box * pixel size, so shell i is at ``box_angstrom / i`` A.
    """

    frequency: np.ndarray
    fsc: np.ndarray
    shells_fsc: np.ndarray
    box_angstrom: float | None


def iteration_fsc(it: Any) -> FscCurve | None:
    value = _first(it, "fsc", "fsc_curve", "gold_standard_fsc")
    if value is None:
        return None
    if isinstance(value, dict):
        res = value.get("resolution", value.get("resolution_A"))
        fsc = value.get("fsc", value.get("FSC"))
        index = value.get("spectral_index", value.get("index"))
    elif hasattr(value, "fsc"):
        res = _first(value, "resolution", "resolution_A")
        fsc = value.fsc
        index = _first(value, "spectral_index", "index")
    elif isinstance(value, np.ndarray) and value.ndim == 2:  # (n, 3): index, resolution A, FSC
        if value.shape[0] == 0:
            return None
        index, res, fsc = value[:, 0], value[:, 1], value[:, 2]
    else:  # (spectral index, resolution A, FSC)
        seq = list(value)
        index, res, fsc = seq[0], seq[1], seq[2]
    res = np.asarray(res, dtype=float)
    fsc = np.asarray(fsc, dtype=float)
    if res.size == 0 or fsc.size != res.size:
        return None
    keep = np.isfinite(res) & (res > 0) & (res < 1e5)
    box_angstrom = None
    if index is not None:
        index = np.asarray(index, dtype=float)
        ok = keep & (index > 0)
        if ok.any():
            box_angstrom = float(np.median(res[ok] * index[ok]))
    return FscCurve(1.0 / res[keep], fsc[keep], fsc, box_angstrom)


def mean_lambda(it: Any) -> float | None:
    values = [r.get("lambda") for r in hook_records(it) if r.get("lambda") is not None]
    return float(np.mean(values)) if values else None


def nominal_resolution(it: Any) -> float | None:
    values = [r.get("nominal_resolution") for r in hook_records(it)]
    values = [v for v in values if v is not None]
    return float(values[-1]) if values else None


def hook_errors(it: Any) -> list[str]:
    return [
        f"iteration {iteration_number(it)} half {r.get('half')}: {r.get('error', 'error')}"
        for r in hook_records(it)
        if r.get("status") == "error"
    ]


def state_status(state: Any) -> str:
    return str(_first(state, "status", default="unknown"))


def state_error(state: Any) -> str | None:
    value = _first(state, "error", "last_error")
    return str(value) if value else None


def state_log_tail(state: Any) -> str:
    value = _first(state, "log_tail", "tail", default="")
    return "\n".join(value) if isinstance(value, (list, tuple)) else str(value)


def state_elapsed(state: Any) -> float | None:
    value = _first(state, "elapsed_s", "elapsed")
    return None if value is None else float(value)


def state_remaining(state: Any) -> float | None:
    value = _first(state, "remaining_s", "estimated_remaining_s", "eta_s", "remaining")
    return None if value is None else float(value)


def state_iterations(state: Any) -> Sequence[Any]:
    return tuple(_first(state, "iterations", default=()))


def state_key(state: Any) -> tuple:
    """Cheap identity of a JobState, to skip redrawing when nothing changed."""
    signature = getattr(state, "signature", None)
    if callable(signature):
        return signature()
    its = state_iterations(state)
    last = its[-1] if its else None
    return (
        state_status(state),
        len(its),
        tuple(sorted(str(p) for p in iteration_maps(last).values())) if last is not None else (),
        len(hook_records(last)) if last is not None else 0,
        state_error(state),
        state_log_tail(state)[-2000:],
    )


def iteration_durations(iterations: Sequence[Any]) -> list[float | None]:
    """Wall time of each iteration from consecutive timestamps (None for the first)."""
    stamps = [iteration_timestamp(it) for it in iterations]
    out: list[float | None] = [None]
    for a, b in itertools.pairwise(stamps):
        out.append(None if a is None or b is None else b - a)
    return out[: len(stamps)]
