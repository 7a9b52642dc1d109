"""Benchmark results on disk: one JSON record per run in ``OUT/results/`` (format
``credgui-benchmark-run/1``), written atomically by the runner and read back by the runner
(to resume) and the report. Apart from both, so neither imports the other for its storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from credgui._io import write_json_atomic
from credgui.bench.plan import RunSpec
from credgui.errors import InputError

__all__ = ["FORMAT", "RESULTS", "VARIANT_ORDER", "load_results", "read_result", "result_path", "write_result"]

RESULTS = "results"
FORMAT = "credgui-benchmark-run/1"
VARIANT_ORDER = ("relion", "none", "red", "cwred", "relion_ext")


def write_result(path: Path, record: dict[str, Any]) -> None:
    """A run's record (or the report's comparisons) as JSON, atomically: a reader (report,
    resume) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record, sort_keys=True, allow_nan=True)


def result_path(out_dir: Path, run: RunSpec) -> Path:
    """Where the record of ``run`` is kept."""
    return Path(out_dir) / RESULTS / f"{run.run_id}.json"


def read_result(path: Path) -> dict[str, Any]:
    """A run's JSON; InputError (one line naming the file) when missing parts or not JSON."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no result yet") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, f"not a credgui benchmark run record (format {FORMAT} expected)")
    missing = [k for k in ("run_id", "status", "settings_key", "variant", "structure", "snr") if k not in data]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}")
    if data["status"] == "finished":
        for k in ("fsc_truth_05_angst", "fsc_truth_0143_angst", "reported_angst", "angular_error"):
            if k not in data:
                raise InputError(path, f"finished run lacks {k}")
    return data


def load_results(out_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(valid run records sorted by structure, SNR, variant; one-line problems for bad files)."""
    d = Path(out_dir) / RESULTS
    if not d.is_dir():
        raise InputError(Path(out_dir), "no results/ folder: not a credgui benchmark directory (or nothing ran yet)")
    records, problems = [], []
    for p in sorted(d.glob("*.json")):
        try:
            records.append(read_result(p))
        except InputError as exc:
            problems.append(str(exc))
    order = {v: i for i, v in enumerate(VARIANT_ORDER)}
    records.sort(key=lambda r: (r["structure"], -float(r["snr"]), order.get(r["variant"], 9)))
    return records, problems


