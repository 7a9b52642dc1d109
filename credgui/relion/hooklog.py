"""The hook's log ``credgui_hook.jsonl`` read back: one ``HookRecord`` per call of
``credgui-reconstruct`` (the hook appends the lines, ``credgui._io.append_line``)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credgui.relion.layout import HOOK_LOG

# error records carry only time, root, status, error: their iteration comes from the root's name
_ROOT_ITERATION = re.compile(r"_it(\d{3})(?:_|$)")


def _root_iteration(root: str) -> int | None:
    m = _ROOT_ITERATION.search(root)
    return int(m.group(1)) if m else None

log = logging.getLogger(__name__)

__all__ = ["HOOK_LOG", "HookRecord", "read_hook_records"]


@dataclass(frozen=True)
class HookRecord:
    """One line of ``credgui_hook.jsonl`` (one call of ``credgui-reconstruct``; DEVELOPING.md).

    ``half`` is None for the joined final call. ``lambda_`` is the CW-RED weight used (eq. 17).
    ``raw`` keeps every field of the line as written.
    """

    time: str
    root: str
    iteration: int | None
    half: int | None
    status: str
    error: str | None
    nominal_resolution: float | None
    lambda_: float | None
    denoiser: str | None
    worker: bool | None
    timings: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    offset: int = 0
    """byte offset of the line in credgui_hook.jsonl"""



def _opt_float(v) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _opt_int(v) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


_WARNED: set[tuple[str, int]] = set()


def read_hook_records(job_dir: str | Path, start_offset: int = 0) -> tuple[HookRecord, ...]:
    """Parse ``credgui_hook.jsonl`` from byte ``start_offset`` on; a partly written last line
    and malformed lines are skipped with a logged warning, once per line (never raises)."""
    path = Path(job_dir) / HOOK_LOG
    try:
        with open(path, "rb") as fh:
            fh.seek(start_offset)
            data = fh.read()
    except OSError:
        return ()
    out: list[HookRecord] = []
    lines = data.split(b"\n")
    if lines and not data.endswith(b"\n"):
        lines = lines[:-1]  # the last line is still being written
    pos = start_offset
    for raw in lines:
        line_start = pos
        pos += len(raw) + 1
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            key = (str(path), line_start)
            if key not in _WARNED:
                _WARNED.add(key)
                log.warning("%s: skipped a torn or malformed line at byte %d: %.60r", path, line_start, raw)
            continue
        timings = obj.get("timings") if isinstance(obj.get("timings"), dict) else {}
        error = obj.get("error")
        out.append(
            HookRecord(
                time=str(obj.get("time", "")),
                root=str(obj.get("root", "")),
                iteration=(_opt_int(obj.get("iteration")) if obj.get("iteration") is not None
                           else _root_iteration(str(obj.get("root", "")))),
                half=_opt_int(obj.get("half")),
                status=str(obj.get("status", "ok")),
                error=None if error is None else " ".join(str(error).split()),
                nominal_resolution=_opt_float(obj.get("nominal_resolution")),
                lambda_=_opt_float(obj.get("lambda")),
                denoiser=None if obj.get("denoiser") is None else str(obj.get("denoiser")),
                worker=None if obj.get("worker") is None else bool(obj.get("worker")),
                timings={k: float(v) for k, v in timings.items() if _opt_float(v) is not None},
                raw=obj,
                offset=line_start,
            )
        )
    return tuple(out)
