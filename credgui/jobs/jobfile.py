"""The bottom of ``credgui.jobs``: the names of credgui's files in a job directory, the
``credgui_job.json`` record (read and written here only, atomically), the project-directory
rule and path helpers. Launch, control and watch all build on this module; it imports no other
module of ``credgui.jobs``.

``credgui_job.json`` records how a job was started: parameters, the exact command, backend,
pid/session or queue job id, start time, ground truth / mask for the GUI's metrics, log offsets
(the sizes of run.out, run.err and the hook log at the launch, so a continued job's status reads
only its own lines), RELION pipeline registration and warm workers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credgui._io import write_json_atomic
from credgui.errors import InputError
from credgui.relion.layout import EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, HOOK_LOG, JOB_FILE, project_dir_of

__all__ = [
    "ABORT_NOW",
    "EXIT_FILE",
    "HOOK_LOG",
    "JOB_FILE",
    "LOG_FILES",
    "STOP_FILE",
    "SUBMIT_SCRIPT",
    "WORKER_SOCKET",
    "JobRecord",
    "LaunchError",
    "new_record",
    "next_job_dir",
    "clear_markers",
    "job_rel",
    "log_offsets",
    "now_iso",
    "project_dir_of",
    "read_job_file",
    "rel_path",
    "write_job_file",
]

EXIT_FILE = "credgui_exit_status"
"""The launcher's exit code (local runs, and queue scripts in sh/bash)."""
STOP_FILE = "credgui_stopped"
"""Written by ``stop_job`` before it kills the job (the status then reads "stopped")."""
SUBMIT_SCRIPT = "run_submit.script"
"""The queue script of a queue submission."""
ABORT_NOW = "RELION_JOB_ABORT_NOW"
"""RELION aborts at its next check when this file appears."""
WORKER_SOCKET = "credgui_worker.sock"
"""The warm worker's socket in the job directory (``_half2.sock`` for a second device)."""
LOG_FILES = ("run.out", "run.err", HOOK_LOG)
"""Logs whose sizes at the launch are the record's ``log_offsets``."""


class LaunchError(RuntimeError):
    """A job could not be started, stopped or continued (one-line message: what and why)."""


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """``credgui_job.json``: how credgui started (or adopted) a job.

    ``backend``: "local", "slurm", "queue" or "adopted". ``job_id``: the pid (local) or queue job
    id. ``pid``/``pgid``/``sid``/``proc_start``: the local launcher (its session holds RELION
    and the workers). ``params``: ``RefineParams.to_dict()``. ``pipeline``: {pipeliner, process,
    counter} or None. ``workers``: [(socket, device)]. ``history``: earlier launches' records (as
    written) of a continued job. ``extra``: fields this version does not know, kept as written.
    """

    backend: str | None = None
    job_dir: str | None = None
    project_dir: str | None = None
    output_root: str | None = None
    params: Mapping[str, Any] | None = None
    ground_truth: str | None = None
    mask: str | None = None
    hook: str | None = None
    host: str | None = None
    start_time: float | None = None
    start_iso: str | None = None
    log_offsets: Mapping[str, int] = field(default_factory=dict)
    pid: int | None = None
    pgid: int | None = None
    sid: int | None = None
    proc_start: int | None = None
    job_id: str | None = None
    queue_job_id: str | None = None
    command: tuple[str, ...] = ()
    relion_command: tuple[str, ...] = ()
    pipeline: Mapping[str, Any] | None = None
    workers: tuple[tuple[str, str], ...] = ()
    pids: tuple[int, ...] = ()
    mpi_procs: int | None = None
    submit_script: str | None = None
    queue: str | None = None
    continued_from: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    format: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``credgui_job.json`` (unknown fields kept as read)."""
        out: dict[str, Any] = dict(self.extra)
        out.update({f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | Path | None = None) -> JobRecord:
        """A record from its JSON object; InputError naming ``path`` for a field of the wrong type
        (None is allowed for every field)."""
        for key, kinds, what in _CHECKS:
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise InputError(path, f"{key} must be {what}, got {value!r:.40}")
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(path, f"{key} must be finite, got {value!r}")
        for name, offset in (data.get("log_offsets") or {}).items():
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise InputError(path, f"log_offsets.{name} must be a byte offset >= 0, got {offset!r:.40}")
        for key in ("command", "relion_command"):
            if not all(isinstance(a, str) for a in data.get(key) or ()):
                raise InputError(path, f"{key} must be a list of strings")
        workers = data.get("workers") or ()
        if not all(isinstance(w, list | tuple) and len(w) == 2 and all(isinstance(x, str) for x in w)
                   for w in workers):
            raise InputError(path, "workers must be a list of [socket, device] pairs")
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in data.get("pids") or ()):
            raise InputError(path, "pids must be a list of integers")
        if not all(isinstance(h, dict) for h in data.get("history") or ()):
            raise InputError(path, "history must be a list of objects")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known and v is not None}
        for key in ("job_id", "queue_job_id"):
            if key in kwargs:
                kwargs[key] = str(kwargs[key])
        if "start_time" in kwargs:
            kwargs["start_time"] = float(kwargs["start_time"])
        for key in ("command", "relion_command", "pids", "history"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "workers" in kwargs:
            kwargs["workers"] = tuple((str(s), str(d)) for s, d in kwargs["workers"])
        extra = {k: v for k, v in data.items() if k not in known and k != "extra"}
        return cls(**kwargs, extra=extra)


def _plain(value: Any) -> Any:
    """Tuples and mappings as JSON's lists and objects, all the way down."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


_NUM = (int, float)
_CHECKS: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("start_time", _NUM, "a number (seconds since 1970)"),
    ("pid", int, "an integer"), ("pgid", int, "an integer"), ("sid", int, "an integer"),
    ("proc_start", int, "an integer"), ("format", int, "an integer"),
    ("backend", str, "a string"), ("host", str, "a string"), ("job_dir", str, "a string"),
    ("project_dir", str, "a string"), ("output_root", str, "a string"), ("hook", str, "a string"),
    ("start_iso", str, "a string"), ("submit_script", str, "a string"), ("queue", str, "a string"),
    ("continued_from", str, "a string"),
    ("job_id", (str, int), "a string"), ("queue_job_id", (str, int), "a string"),
    ("params", dict, "an object"), ("log_offsets", dict, "an object"), ("pipeline", dict, "an object"),
    ("ground_truth", str, "a string"), ("mask", str, "a string"),
    ("command", list, "a list"), ("relion_command", list, "a list"), ("workers", list, "a list"),
    ("pids", list, "a list"), ("history", list, "a list"), ("mpi_procs", int, "an integer"),
)
"""Fields of credgui_job.json checked at the door."""


def read_job_file(job_dir: str | Path) -> JobRecord | None:
    """``JOB/credgui_job.json``; None when absent. InputError (one line naming it) when it
    cannot be read, is not a JSON object or holds a field of the wrong type."""
    path = Path(job_dir) / JOB_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    return JobRecord.from_dict(data, path)


def write_job_file(job_dir: str | Path, record: JobRecord) -> Path:
    """Write ``record`` to ``JOB/credgui_job.json`` atomically (readers never see half of it)."""
    path = Path(job_dir) / JOB_FILE
    write_json_atomic(path, record.to_dict(), sort_keys=True, allow_nan=True)
    return path


def rel_path(path: str | Path, base: str | Path) -> str:
    """``path`` relative to ``base`` when inside it (as RELION's GUI writes paths), else absolute."""
    p = os.path.abspath(path)
    b = os.path.abspath(base)
    if p == b or p.startswith(b.rstrip(os.sep) + os.sep):
        return os.path.relpath(p, b)
    return p


def job_rel(job_dir: str | Path) -> str:
    """The job directory relative to its project directory, e.g. ``Refine3D/job001``."""
    return rel_path(job_dir, project_dir_of(job_dir))


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (the record's and stop file's stamp)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log_offsets(job_dir: str | Path) -> dict[str, int]:
    """Current sizes of the job's logs (0 where absent): where this launch's lines begin."""
    out = {}
    for name in LOG_FILES:
        try:
            out[name] = (Path(job_dir) / name).stat().st_size
        except OSError:
            out[name] = 0
    return out


def clear_markers(job_dir: str | Path) -> None:
    """Remove the end markers of an earlier run (RELION's and credgui's) before a (re)start."""
    for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED, EXIT_FILE, STOP_FILE, ABORT_NOW):
        (Path(job_dir) / name).unlink(missing_ok=True)


def new_record(job_dir: str | Path, backend: str, **fields: Any) -> JobRecord:
    """The record of a job starting now on this host (``fields``: the rest of ``JobRecord``)."""
    job = Path(os.path.abspath(job_dir))
    base: dict[str, Any] = dict(
        backend=backend,
        job_dir=str(job),
        project_dir=str(project_dir_of(job)),
        output_root=f"{job_rel(job)}/run",
        host=socket.gethostname(),
        start_time=time.time(),
        start_iso=now_iso(),
        log_offsets=log_offsets(job),
    )
    base.update(fields)
    return JobRecord(**base)


def next_job_dir(project_dir: str | Path, job_type: str = "Refine3D", *, create: bool = True) -> Path:
    """The next RELION-style job directory ``PROJECT/JOB_TYPE/jobNNN`` (absolute).

    Job numbers are project-wide as in RELION: one more than the highest ``jobNNN`` under any
    job-type directory and than ``_rlnPipeLineJobCounter - 1`` of ``default_pipeline.star``.
    With ``create`` the directory is made (atomically: two callers never get the same one).
    """
    proj = Path(os.path.abspath(project_dir))
    if not re.fullmatch(r"[A-Za-z0-9_]+", job_type):
        raise ValueError(f"job type must be a plain name like Refine3D, got {job_type!r}")
    highest = 0
    try:
        types = [d for d in proj.iterdir() if d.is_dir()]
    except FileNotFoundError:
        types = []
    for tdir in types:
        try:
            for j in tdir.iterdir():
                m = re.fullmatch(r"job(\d+)", j.name)
                if m:
                    highest = max(highest, int(m[1]))
        except OSError:
            continue
    pipeline = proj / "default_pipeline.star"
    if pipeline.is_file():
        m = re.search(r"_rlnPipeLineJobCounter\s+(\d+)", pipeline.read_text(errors="replace"))
        if m:
            highest = max(highest, int(m[1]) - 1)
    number = highest + 1
    while True:
        job = proj / job_type / (f"job{number:03d}" if number < 1000 else f"job{number}")
        if not create:
            return job
        job.parent.mkdir(parents=True, exist_ok=True)
        try:
            job.mkdir()
            return job
        except FileExistsError:
            number += 1
