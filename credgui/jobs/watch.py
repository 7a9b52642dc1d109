"""The state of a refinement job, read from its directory (and its process or queue job).

``scan_job`` is cheap (parse results are cached by file size and mtime) and never raises on
half-written files; ``watch_job`` is a generator for napari's ``thread_worker`` and for the CLI.

Status rules, first match wins:
1. ``credgui_stopped`` (written by ``stop_job``) or ``RELION_JOB_EXIT_ABORTED``: "stopped"
   (once no process is left; "running" while it dies).
2. ``RELION_JOB_EXIT_FAILURE``, or a hook call logged with status "error" since the launch:
   "failed" (RELION aborts after a failed hook).
3. The process group (local), the Slurm job (``squeue``/``scontrol``) or, for a job started
   elsewhere, a ``relion_refine`` process writing into the directory is alive: "running".
4. ``RELION_JOB_EXIT_SUCCESS``, the final ``run_class001.mrc``, or launcher exit code 0:
   "finished".
5. A non-zero exit code, a failed/cancelled Slurm job, an ``ERROR`` line in run.err, or a dead
   process without success: "failed" (cancelled by Slurm: "stopped").
6. Otherwise "unknown" (e.g. a job from another host whose process cannot be seen).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from credgui.errors import InputError
from credgui.jobs import _proc
from credgui.jobs.jobfile import (
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_FILE,
    EXIT_SUCCESS,
    HOOK_LOG,
    STOP_FILE,
    JobRecord,
    project_dir_of,
    read_job_file,
)
from credgui.relion.hooklog import HookRecord, read_hook_records
from credgui.relion.jobdir import SETTLE_S, Iteration, find_iterations, is_relion_job_dir
from credgui.relion.star_readers import read_optimiser_star

__all__ = ["JobState", "STATUSES", "scan_job", "watch_job", "queue_state", "relion_error_line"]

STATUSES = ("running", "finished", "failed", "stopped", "unknown")
LOG_TAIL_LINES = 12
_SLURM_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
_SLURM_STOPPED = {"CANCELLED", "PREEMPTED", "REVOKED"}


@dataclass(frozen=True)
class JobState:
    """A snapshot of a refinement job.

    ``status``: one of STATUSES. ``iterations``: the complete iterations (``credgui.relion.
    jobdir.Iteration``), the final joined one last. ``error``: one line, or None. ``log_tail``:
    the last lines of run.out then run.err (progress bars left out). ``elapsed_s``: since the
    launch (to the end when ended). ``remaining_s``: a rough estimate while running (see
    ``_estimate_remaining``), 0 when finished, None when unknown. ``backend``: "local", "slurm",
    "queue", "adopted" or None (no credgui_job.json). ``job_id``: pid or queue job id.
    ``queue_state``: Slurm's state (PENDING, RUNNING, ...) for queue jobs. ``hook_records``:
    every logged hook call. ``ground_truth``/``mask``: from the launch, for the GUI's metrics.
    """

    job_dir: Path
    status: str
    iterations: tuple[Iteration, ...] = ()
    error: str | None = None
    log_tail: tuple[str, ...] = ()
    elapsed_s: float | None = None
    remaining_s: float | None = None
    backend: str | None = None
    job_id: str | None = None
    queue_state: str | None = None
    hook_records: tuple[HookRecord, ...] = ()
    ground_truth: Path | None = None
    mask: Path | None = None

    @property
    def ended(self) -> bool:
        return self.status in ("finished", "failed", "stopped")

    @property
    def last_iteration(self) -> Iteration | None:
        return self.iterations[-1] if self.iterations else None

    def signature(self) -> tuple:
        """What ``watch_job`` compares: everything but the clock-driven times."""
        return (
            self.status,
            self.error,
            tuple((i.number, i.final, i.time) for i in self.iterations),
            self.log_tail,
            self.queue_state,
            len(self.hook_records),
        )


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _tail_text(path: Path, start: int = 0, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(start, size - max_bytes))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _clean_lines(text: str) -> list[str]:
    out = []
    for line in text.replace("\r", "\n").splitlines():
        s = line.rstrip()
        if not s.strip() or "~~(,_,\">" in s or s.strip().startswith("[oo]") or set(s.strip()) <= set(".~"):
            continue
        out.append(s)
    return out


def relion_error_line(text: str) -> str | None:
    """The first RELION error message in ``text`` as one line (RELION prints ``ERROR:`` and the
    message on the next line), or None."""
    lines = text.replace("\r", "\n").splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if not s.startswith("ERROR"):
            continue
        msg = s[len("ERROR"):].lstrip(":").strip()
        j = i + 1
        while not msg and j < len(lines) and j <= i + 3:
            msg = lines[j].strip()
            j += 1
        while msg.startswith("ERROR"):
            msg = msg[len("ERROR"):].lstrip(":").strip()
        return "RELION: " + (" ".join(msg.split())[:300] or "error (no message)")
    return None


_EXC_RE = re.compile(r"^(?:[\w.]+(?:Error|Exception|Interrupt)|credgui-reconstruct|error)\b:? .+")


def _hook_stderr_line(text: str) -> str | None:
    """The last line in RELION's stderr that a failing hook wrote: a Python exception line
    (``ModuleNotFoundError: ...``) or a ``credgui-reconstruct: ...`` / ``error: ...`` message."""
    found = None
    for line in text.replace("\r", "\n").splitlines():
        s = line.strip()
        if s.startswith(("ERROR", "in: ", "relion_")):
            continue
        if _EXC_RE.match(s):
            found = s
    return " ".join(found.split())[:200] if found else None


def _run(cmd: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def queue_state(job_id: str | None) -> tuple[str | None, str | None]:
    """(Slurm state, exit code "a:b") of a job: ``squeue -h -j ID -o %T`` while Slurm lists it,
    else ``scontrol show job ID`` (finished jobs stay for MinJobAge). (None, None) when unknown."""
    if not job_id:
        return None, None
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"])
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0].strip(), None
    out = _run(["scontrol", "show", "job", str(job_id)])
    if out is not None and out.returncode == 0:
        m = re.search(r"JobState=(\S+)", out.stdout)
        e = re.search(r"\bExitCode=(\S+)", out.stdout)
        if m:
            return m.group(1), e.group(1) if e else None
    return None, None


def _read_exit_code(job: Path) -> int | None:
    try:
        return int((job / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _estimate_remaining(iterations: tuple[Iteration, ...], record: JobRecord | None, start: float | None, now: float) -> float | None:
    """Seconds left, roughly: the mean duration of the last two iterations times the iterations
    still expected. With ``auto_iter_max``: up to it. Else RELION's auto-refine needs about one
    iteration per HEALPix order until local searches, then two without resolution gain to
    converge, then the joined final iteration; later iterations are slower (finer sampling),
    so this tends to be low."""
    its = [i for i in iterations if not i.final]
    # iteration 0 is RELION's setup (the initial reference): time iterations from there on
    times = [i.time for i in its]
    if len(times) < 2:
        return None
    durations = [b - a for a, b in zip(times, times[1:]) if b > a]
    if not durations:
        return None
    per_iter = sum(durations[-2:]) / len(durations[-2:])
    last = its[-1]
    auto_iter_max = None
    local_order = None
    wo_gain = 0
    if record and record.params:
        auto_iter_max = record.params.get("auto_iter_max")
    try:
        opt = read_optimiser_star(last.optimiser_star) if last.optimiser_star else None
    except InputError:
        opt = None
    if opt is not None:
        if auto_iter_max is None and opt.nr_iterations < 999:
            auto_iter_max = opt.nr_iterations
        local_order = opt.auto_local_healpix_order
        wo_gain = opt.nr_iter_wo_resol_gain or 0
    if auto_iter_max is not None:
        n_left = max(0, int(auto_iter_max) - last.number)
    else:
        steps = max(0, (local_order or 0) - (last.healpix_order or 0))
        n_left = steps + max(1, 2 - wo_gain) + 1
    since_last = max(0.0, now - last.time)
    return max(0.0, n_left * per_iter - since_last) if n_left else 0.0


# --------------------------------------------------------------------------------------------
# scan
# --------------------------------------------------------------------------------------------


def scan_job(job_dir: str | Path, *, settle_s: float = SETTLE_S) -> JobState:
    """The current JobState of ``job_dir``.

    Raises InputError only when ``job_dir`` is missing or not a RELION job directory at all;
    unreadable or half-written files give status "unknown" / incomplete iterations instead.
    """
    job = Path(os.path.abspath(job_dir))
    if not job.is_dir():
        raise InputError(job, "job directory not found" if not job.exists() else "not a directory")
    if not is_relion_job_dir(job):
        raise InputError(job, "not a RELION job directory (no credgui_job.json, run.out or *_optimiser.star)")
    now = time.time()
    problems: list[str] = []
    job_file_error = None
    try:
        record = read_job_file(job)
    except InputError as exc:
        record, job_file_error = None, str(exc)
        problems.append(job_file_error)
    backend = record.backend if record else None
    job_id = record.job_id if record else None
    offsets = record.log_offsets if record else {}
    start = record.start_time if record else None
    proj = Path(record.project_dir) if record and record.project_dir else project_dir_of(job)

    # -- liveness
    alive: bool | None = None
    q_state = q_exit = None
    if record is None or backend == "adopted":
        # started elsewhere: look for RELION processes writing here (this host only)
        pids = _proc.relion_processes(job)
        if record and record.pgid:
            pids += _proc.session_members(record.sid or record.pgid)
        alive = bool(pids)
        if record and record.queue_job_id:
            q_state, q_exit = queue_state(record.queue_job_id)
            if q_state is not None:
                alive = alive or q_state in _SLURM_ALIVE
    elif backend == "local":
        same_host = record.host in (None, _hostname())
        if same_host:
            alive = bool(_proc.session_members(record.sid or record.pgid)) or _proc.pid_alive(
                record.pid, record.proc_start
            )
    elif backend == "slurm":
        q_state, q_exit = queue_state(job_id)
        if q_state is not None:
            alive = q_state in _SLURM_ALIVE

    # -- markers and logs
    names = set(os.listdir(job))
    success = EXIT_SUCCESS in names
    failure = EXIT_FAILURE in names
    aborted = EXIT_ABORTED in names
    stopped = STOP_FILE in names
    exit_code = _read_exit_code(job) if EXIT_FILE in names else None
    all_records = read_hook_records(job)
    hook_offset = int(offsets.get(HOOK_LOG, 0) or 0)
    new_records = [r for r in all_records if r.offset >= hook_offset]
    hook_error = next((r for r in new_records if r.status != "ok"), None)
    err_text = _tail_text(job / "run.err", int(offsets.get("run.err", 0) or 0), 65536)
    out_text = _tail_text(job / "run.out", int(offsets.get("run.out", 0) or 0), 16384)
    relion_error = relion_error_line(err_text) or relion_error_line(out_text)
    if relion_error and "system call" in relion_error:
        hook_said = _hook_stderr_line(err_text)
        if hook_said:
            relion_error += f" (the hook said: {hook_said})"
    log_tail = tuple(_clean_lines(out_text)[-LOG_TAIL_LINES:] + _clean_lines(err_text)[-LOG_TAIL_LINES:])

    ended_markers = success or failure or aborted or exit_code is not None
    running_for_files = alive is True or (alive is None and not ended_markers)
    try:
        iterations = find_iterations(
            job, project_dir=proj, running=running_for_files, hook_records=all_records,
            settle_s=settle_s, problems=problems,
        )
    except InputError as exc:
        iterations, problems = (), problems + [str(exc)]
    has_final = any(i.final for i in iterations)

    # -- status
    error: str | None = None
    if stopped or aborted:
        status = "running" if alive else "stopped"
        if aborted and not stopped:
            error = "RELION aborted (RELION_JOB_EXIT_ABORTED)"
    elif failure or hook_error is not None:
        status = "failed"
        if hook_error is not None:
            error = f"hook failed at {hook_error.root or 'iteration ' + str(hook_error.iteration)}: {hook_error.error or 'error'}"
        else:
            error = relion_error or "RELION failed (RELION_JOB_EXIT_FAILURE)"
    elif alive:
        status = "running"
    elif success or has_final or exit_code == 0:
        status = "finished"
    elif exit_code is not None:
        status = "failed"
        error = relion_error or f"RELION's launcher exited with code {exit_code} ({job / 'run.err'})"
    elif q_state is not None and q_state in _SLURM_STOPPED:
        status = "stopped"
        error = f"queue job {job_id} {q_state}"
    elif q_state is not None and q_state != "COMPLETED":
        status = "failed"
        error = relion_error or f"queue job {job_id} {q_state} (exit code {q_exit})"
    elif relion_error is not None:
        status = "failed"
        error = relion_error
    elif job_file_error is not None:
        status = "unknown"  # without credgui's job file a dead process proves nothing
        error = job_file_error
    elif alive is False:
        status = "failed"
        who = f"process {record.pid}" if record and record.pid else "the RELION process"
        if q_state == "COMPLETED":
            who = f"queue job {job_id}"
        error = f"{who} ended without RELION_JOB_EXIT_SUCCESS (see {job / 'run.err'})"
    elif backend == "queue" and not ended_markers:
        status = "running"  # another scheduler: RELION's exit markers will tell
    else:
        status = "unknown"
        error = problems[0] if problems else "cannot tell whether RELION still runs (no process found on this host)"
    if status == "unknown" and error is None and problems:
        error = problems[0]
    if status == "running" and q_state == "PENDING":
        log_tail = log_tail + (f"queue job {job_id} is waiting in the queue (PENDING)",)

    # -- times
    if start is None:
        first = [i.time for i in iterations if i.number == 0]
        start = first[0] if first else None
    end = now
    if status in ("finished", "failed", "stopped"):
        marks = [job / n for n in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED, EXIT_FILE, STOP_FILE) if n in names]
        mtimes = [p.stat().st_mtime for p in marks if p.exists()] + [i.time for i in iterations[-1:]]
        end = max(mtimes) if mtimes else now
    elapsed = (end - start) if start is not None else None
    if status == "finished":
        remaining = 0.0
    elif status == "running":
        remaining = _estimate_remaining(iterations, record, start, now)
    else:
        remaining = None

    def _opt_path(key: str) -> Path | None:
        value = getattr(record, key) if record else None
        return Path(value) if value else None

    return JobState(
        job_dir=job,
        status=status,
        iterations=iterations,
        error=error,
        log_tail=log_tail,
        elapsed_s=elapsed,
        remaining_s=remaining,
        backend=backend,
        job_id=None if job_id is None else str(job_id),
        queue_state=q_state,
        hook_records=all_records,
        ground_truth=_opt_path("ground_truth"),
        mask=_opt_path("mask"),
    )


def _hostname() -> str:
    import socket

    return socket.gethostname()


def watch_job(
    job_dir: str | Path, poll_s: float = 1.0, *, timeout_s: float | None = None
) -> Generator[JobState, None, None]:
    """Yield a JobState now and whenever something changes (status, a new complete iteration,
    log lines, hook calls); return once the job has ended and its last files are read.

    For napari: ``thread_worker(watch_job)(job_dir)``; the GUI updates layers in the
    ``yielded`` slot. Stops cleanly between yields (``generator.close()``). ``timeout_s``: give
    up (return) after that long.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_sig = None
    while True:
        state = scan_job(job_dir)
        sig = state.signature()
        if sig != last_sig:
            last_sig = sig
            yield state
        if state.status != "running":
            return
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(poll_s)
