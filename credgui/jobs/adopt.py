"""Adopt a job started elsewhere (RELION's GUI, another credgui, a queue): find its RELION
processes on this host or its Slurm job and record them in ``credgui_job.json``."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from credgui.errors import InputError
from credgui.jobs import _proc
from credgui.jobs.command import HOOK_ENV, RELION_REFINE_MPI
from credgui.jobs.jobfile import LOG_FILES, SUBMIT_SCRIPT, JobRecord, job_rel, new_record, read_job_file, write_job_file
from credgui.relion.jobdir import is_relion_job_dir
from credgui.relion.star_readers import read_optimiser_star

__all__ = ["adopt_record"]


def _find_queue_job(job: Path) -> str | None:
    """A Slurm job whose name is the RELION job name (``Refine3D/job001/``) or whose working
    directory is the project and whose output goes to this job's run.out."""
    out = _proc.run_quiet(["squeue", "-h", "-o", "%i|%j|%Z|%o"], timeout=10)
    if out is None or out.returncode != 0:
        return None
    name = job_rel(job) + "/"
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        if parts[1] == name or parts[1] == str(job) + "/" or str(job) in line:
            return parts[0].strip()
    return None


def adopt_record(job_dir: str | Path) -> JobRecord:
    """The job's record: the one credgui wrote, else one made now for a job started elsewhere
    (backend "adopted": its RELION processes on this host, ``--o`` inside the directory, or its
    Slurm job), written to ``credgui_job.json``."""
    job = Path(os.path.abspath(job_dir))
    if not job.is_dir():
        raise InputError(job, "job directory not found")
    record = read_job_file(job)
    if record is not None:
        return record
    if not is_relion_job_dir(job):
        raise InputError(job, "not a RELION job directory (no run.out, note.txt or *_optimiser.star)")
    pids = _proc.relion_processes(job)
    queue_id = _find_queue_job(job) if (job / SUBMIT_SCRIPT).exists() else None
    command: list[str] = []
    note = job / "note.txt"
    if note.is_file():
        for line in note.read_text(errors="replace").splitlines():
            if "relion_refine" in line:
                command = shlex.split(line.replace("`which relion_refine_mpi`", RELION_REFINE_MPI)
                                      .replace("`which relion_refine`", "relion_refine"))
                break
    optimisers = sorted(job.glob("*_it[0-9][0-9][0-9]_optimiser.star"), key=lambda p: p.stat().st_mtime)
    if not command and optimisers:
        try:
            command = [RELION_REFINE_MPI, *shlex.split(read_optimiser_star(optimisers[0]).command_line)]
        except InputError:
            pass
    if not command and pids:
        args = _proc.cmdline(pids[0])
        i = next(k for k, a in enumerate(args) if "relion_refine" in Path(a).name)
        command = [Path(args[i]).name, *args[i + 1:]]
    starts = [p.stat().st_mtime for p in ([note] if note.is_file() else []) + optimisers[:1]]
    hook = os.environ.get(HOOK_ENV)
    if pids:
        try:
            hook = _environ_of(pids[0]).get(HOOK_ENV, hook)
        except OSError:
            pass
    record = new_record(
        job, "adopted", hook=hook, command=tuple(command), relion_command=tuple(command), pids=tuple(pids),
        queue_job_id=queue_id, start_time=min(starts) if starts else time.time(),
        log_offsets=dict.fromkeys(LOG_FILES, 0),
    )
    write_job_file(job, record)
    return record


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out
