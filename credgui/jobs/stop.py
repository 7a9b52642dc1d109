"""Stop a refinement job: its local session (mpirun, every rank, a running hook, the warm
workers), its Slurm job (``scancel``) or, for another scheduler, RELION's abort file; then
RELION's pipeline is told, as RELION's own abort would."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from credgui._io import write_json_atomic
from credgui.jobs import _proc
from credgui.jobs.adopt import adopt_record
from credgui.jobs.jobfile import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    STOP_FILE,
    JobRecord,
    LaunchError,
    now_iso,
    project_dir_of,
)
from credgui.jobs.watch import JobState, queue_state, scan_job
from credgui.relion import pipeline

__all__ = ["stop_job"]


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _local_targets(job: Path, record: JobRecord) -> list[int]:
    """Processes to stop for a local or adopted job: the launcher's session (mpirun, every rank,
    a running hook: Open MPI gives each rank its own process group, but all stay in the session
    ``launch_local`` created), RELION processes writing into this job and, for an adopted job,
    their mpirun. The session is only used when it is provably the job's own (its leader is the
    recorded launcher, or it holds a RELION process of this job): never a GUI's or shell's."""
    relion = _proc.relion_processes(job)
    pids = list(relion)
    sid = (record.sid or record.pgid) if record.backend == "local" else None
    if sid:
        members = _proc.session_members(sid)
        if _proc.pid_alive(record.pid, record.proc_start) or set(members) & set(relion):
            pids += members
    # an adopted job's mpirun (the parent of its ranks) goes too
    for pid in relion:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(Path(a).name in ("mpirun", "mpiexec", "orterun") for a in _proc.cmdline(ppid)[:1]):
            pids.append(ppid)
    pids += [int(p) for p in record.pids if _proc.pid_alive(int(p))]
    return sorted(set(pids) - {os.getpid()})


def stop_job(job_dir: str | Path, timeout: float = 15.0) -> JobState:
    """Stop a running job and return its state (then "stopped").

    Local: SIGTERM to every process of the launcher's session (mpirun, every rank, a running
    hook), SIGKILL to what is left after ``timeout`` s; the session is checked to be the job's
    own first. Slurm:
    ``scancel``. Another scheduler: ``RELION_JOB_ABORT_NOW`` (RELION aborts at its next check).
    ``credgui_stopped`` is written first so the status reads "stopped", not "failed".
    """
    job = Path(os.path.abspath(job_dir))
    record = adopt_record(job)  # credgui's own record, else one made now for a job started elsewhere
    before = scan_job(job)
    if before.status != "running":
        return before  # nothing to stop: keep "finished"/"failed" as they are
    write_json_atomic(job / STOP_FILE, {"time": now_iso(), "pid": os.getpid()}, indent=None)
    backend = record.backend
    queue_id = record.job_id if backend == "slurm" else record.queue_job_id
    if queue_id:
        out = _proc.run_quiet(["scancel", str(queue_id)])
        if out is None or out.returncode != 0:
            raise LaunchError(
                f"scancel {queue_id} failed: {' '.join(((out.stdout + out.stderr) if out else 'scancel not found').split())[:200]}"
            )
        deadline = time.monotonic() + max(timeout, 30.0)
        while time.monotonic() < deadline:
            state, _ = queue_state(str(queue_id))
            if state is None or state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
                break
            time.sleep(0.5)
    elif backend == "queue":
        (job / ABORT_NOW).touch()
    pids = _local_targets(job, record)
    if pids:
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _local_targets(job, record):
            time.sleep(0.2)
        left = _local_targets(job, record)
        if left:
            _signal_all(left, signal.SIGKILL)
            time.sleep(0.5)
    _stop_workers(record, timeout)
    sid = record.sid if record.backend == "local" else None
    deadline = time.monotonic() + timeout
    while sid and _proc.session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.1)  # members still exiting (a worker freeing its model) read as alive
    if record.pipeline and not any((job / n).exists() for n in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)):
        # as RELION's own abort ends: RELION_JOB_EXIT_ABORTED, then the pipeline says Aborted
        (job / EXIT_ABORTED).touch()
        pipeline.check_completion(project_dir_of(job), record.pipeline.get("pipeliner"))
    return scan_job(job)


def _worker_pids(sockets: Sequence[str]) -> list[int]:
    """Live ``credgui worker --socket S`` processes (not ``--stop`` ones) for these sockets."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        args = _proc.cmdline(int(d.name))
        if "worker" in args and "--socket" in args and "--stop" not in args:
            i = args.index("--socket")
            if i + 1 < len(args) and args[i + 1] in sockets:
                found.append(int(d.name))
    return found


def _stop_workers(record: JobRecord, timeout: float) -> None:
    """The job's warm workers go with it: they got SIGTERM with the job's session and exit
    after removing their socket; wait for that, ask any left over, SIGKILL as a last resort."""
    sockets = [str(w[0]) for w in record.workers]
    if not sockets:
        return
    deadline = time.monotonic() + timeout
    while _worker_pids(sockets) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _worker_pids(sockets)
    if left:
        from credgui.denoise import worker

        for sock in sockets:
            worker.stop_worker(sock, timeout_s=5.0)
        _signal_all(_worker_pids(sockets), signal.SIGKILL)


