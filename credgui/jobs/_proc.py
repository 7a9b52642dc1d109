"""Process bookkeeping through /proc (Linux): liveness without zombies, process groups, and
RELION processes that belong to a job directory. Cheap, never raises."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), None when the process does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may hold spaces: split after the last ')'
    return raw[raw.rfind(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22), to tell a
    process from a later one that reuses its pid."""
    f = _stat_fields(pid)
    return int(f[19]) if f and len(f) > 19 else None


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """True when ``pid`` runs (zombies count as dead) and, if given, started at ``start_time``."""
    if not pid:
        return False
    f = _stat_fields(int(pid))
    if f is None or f[0] in ("Z", "X"):
        return False
    if start_time is not None and len(f) > 19 and int(f[19]) != int(start_time):
        return False
    return True


def _live_with(field: int, value: int | None) -> list[int]:
    """Live (non-zombie) processes whose /proc/PID/stat field ``field`` (after the command
    name: 2 = process group, 3 = session) equals ``value``."""
    if not value:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f and len(f) > field and f[0] not in ("Z", "X") and int(f[field]) == int(value):
            out.append(int(entry))
    return out


def pgid_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    return _live_with(2, pgid)


def session_members(sid: int | None) -> list[int]:
    """Live (non-zombie) processes in session ``sid``. A launcher started with
    ``start_new_session`` leads its own session; Open MPI's mpirun puts every rank in a process
    group of its own, but they all stay in the session (and so does a hook a rank runs)."""
    return _live_with(3, sid)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def relion_processes(job_dir: str | Path) -> list[int]:
    """Live ``relion_refine``/``relion_refine_mpi`` processes (and their ``mpirun``) whose
    ``--o`` output root lies in ``job_dir`` (resolved against each process's working directory)."""
    job = Path(job_dir).resolve()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        args = cmdline(pid)
        if not args or not any("relion_refine" in Path(a).name for a in args[:8]):
            continue
        f = _stat_fields(pid)
        if f is None or f[0] in ("Z", "X"):
            continue
        try:
            o = args[args.index("--o") + 1]
        except (ValueError, IndexError):
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        root = (cwd / o) if not os.path.isabs(o) else Path(o)
        try:
            if root.parent.resolve() == job:
                out.append(pid)
        except OSError:
            continue
    return out


def pgid_of(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[2]) if f and len(f) > 2 else None


def describe(pid: int) -> str:
    return shlex.join(cmdline(pid))[:200]


def run_quiet(cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess | None:
    """``cmd``'s captured output, or None when it cannot run or times out (scancel, squeue)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
