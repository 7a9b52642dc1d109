"""Stop, continue and adopt refinement jobs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from credgui.errors import InputError
from credgui.jobs import _proc
from credgui.jobs.launch import (
    HOOK_ENV,
    RELION_REFINE_MPI,
    STOP_FILE,
    SUBMIT_SCRIPT,
    JobHandle,
    LaunchError,
    _base_record,
    _clear_markers,
    _hook_env,
    _job_rel,
    _now_iso,
    _rel,
    _start_local,
    _worker_env,
    _write_job_file,
    mpirun_prefix,
    project_dir_of,
    read_job_file,
    refuse_blush,
    render_submit_script,
    submit_script,
)
from credgui.jobs.watch import JobState, queue_state, scan_job
from credgui.relion import pipeline
from credgui.relion.jobdir import EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, is_relion_job_dir, read_optimiser_star

__all__ = ["stop_job", "continue_job", "adopt_job", "continue_command"]


def _run_quiet(cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _local_targets(job: Path, record: Mapping[str, Any]) -> list[int]:
    """Processes to stop for a local or adopted job: the launcher's session (mpirun, every rank,
    a running hook: Open MPI gives each rank its own process group, but all stay in the session
    ``launch_local`` created), RELION processes writing into this job and, for an adopted job,
    their mpirun. The session is only used when it is provably the job's own (its leader is the
    recorded launcher, or it holds a RELION process of this job): never a GUI's or shell's."""
    relion = _proc.relion_processes(job)
    pids = list(relion)
    sid = (record.get("sid") or record.get("pgid")) if record.get("backend") == "local" else None
    if sid:
        members = _proc.session_members(sid)
        if _proc.pid_alive(record.get("pid"), record.get("proc_start")) or set(members) & set(relion):
            pids += members
    # an adopted job's mpirun (the parent of its ranks) goes too
    for pid in relion:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(Path(a).name in ("mpirun", "mpiexec", "orterun") for a in _proc.cmdline(ppid)[:1]):
            pids.append(ppid)
    pids += [int(p) for p in record.get("pids") or [] if _proc.pid_alive(int(p))]
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
    record = read_job_file(job)
    if record is None:
        adopt_job(job)
        record = read_job_file(job) or {}
    before = scan_job(job)
    if before.status != "running":
        return before  # nothing to stop: keep "finished"/"failed" as they are
    (job / STOP_FILE).write_text(json.dumps({"time": _now_iso(), "pid": os.getpid()}) + "\n")
    backend = record.get("backend")
    queue_id = record.get("job_id") if backend == "slurm" else record.get("queue_job_id")
    if queue_id:
        out = _run_quiet(["scancel", str(queue_id)])
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
        (job / "RELION_JOB_ABORT_NOW").touch()
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
    sid = record.get("sid") if record.get("backend") == "local" else None
    deadline = time.monotonic() + timeout
    while sid and _proc.session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.1)  # members still exiting (a worker freeing its model) read as alive
    if record.get("pipeline") and not any((job / n).exists() for n in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)):
        # as RELION's own abort ends: RELION_JOB_EXIT_ABORTED, then the pipeline says Aborted
        (job / EXIT_ABORTED).touch()
        pipeline.check_completion(project_dir_of(job), record["pipeline"].get("pipeliner"))
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


def _stop_workers(record: Mapping[str, Any], timeout: float) -> None:
    """The job's warm workers go with it: they got SIGTERM with the job's session and exit
    after removing their socket; wait for that, ask any left over, SIGKILL as a last resort."""
    sockets = [str(w[0]) for w in record.get("workers") or []]
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


def _opt_value(command_line: str, option: str) -> str | None:
    args = shlex.split(command_line)
    if option in args:
        i = args.index(option)
        return args[i + 1] if i + 1 < len(args) else None
    return None


def continue_command(job_dir: str | Path, *, auto_iter_max: int | None = None,
                     extra_args: Sequence[str] = ()) -> tuple[list[str], int, int]:
    """The relion_refine_mpi command that continues ``job_dir`` from its last complete iteration
    (as RELION's GUI does: ``--continue JOB/run_itNNN_optimiser.star --o JOB/run_ctNNN``), and
    the (MPI ranks, threads) to run it with. ``--external_reconstruct`` is passed again whenever
    the job ran with it (``_rlnDoExternalReconstruct`` of the optimiser STAR, or its recorded
    parameters): RELION 4.0 and 5.0 parse it from the command line on ``--continue``
    (``MlOptimiser::parseContinue``) and without it run their own M-step; 3.1 restores it from
    the STAR and only warns that the option is "not a valid RELION argument" (harmless).
    ``--blush`` (RELION 5) with it is refused: RELION would run Blush and never the hook.
    ``auto_iter_max``: None continues to convergence."""
    job = Path(os.path.abspath(job_dir))
    state = scan_job(job)
    if state.status == "running":
        raise LaunchError(f"{job}: still running; stop it before continuing")
    if any(i.final for i in state.iterations):
        raise LaunchError(f"{job}: the refinement has converged (final map written); nothing to continue")
    its = [i for i in state.iterations if i.optimiser_star is not None]
    if not its:
        raise InputError(job, "no complete iteration to continue from (no whole run_itNNN_optimiser.star)")
    last = its[-1]
    opt = read_optimiser_star(last.optimiser_star)
    record = read_job_file(job) or {}
    params = record.get("params") or {}
    proj = Path(record.get("project_dir") or project_dir_of(job))
    line = opt.command_line

    def pick(key: str, option: str, default: str) -> str:
        if params.get(key) is not None:
            value = params[key]
            return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        return _opt_value(line, option) or default

    rel_job = _rel(job, proj)
    cmd = [
        RELION_REFINE_MPI,
        "--continue", _rel(last.optimiser_star, proj),
        "--o", f"{rel_job}/run_ct{last.number}",
        "--dont_combine_weights_via_disc",
        "--pool", pick("pool", "--pool", "3"),
        "--pad", pick("pad", "--pad", "2"),
        "--particle_diameter", pick("particle_diameter", "--particle_diameter", "-1"),
        "--j", pick("threads", "--j", "1"),
    ]
    if auto_iter_max is not None:
        if auto_iter_max <= last.number:
            raise InputError(job, f"auto_iter_max {auto_iter_max} must be after the last iteration ({last.number})")
        cmd += ["--auto_iter_max", str(auto_iter_max)]
    external = bool(opt.do_external_reconstruct) or "--external_reconstruct" in shlex.split(line)
    if params.get("external_reconstruct") is False:
        external = False
    if external:
        cmd.append("--external_reconstruct")
        refuse_blush(job / "credgui_job.json", [*shlex.split(line), *extra_args])
    cmd += ["--pipeline_control", f"{rel_job}/", *extra_args]
    mpi = int(params.get("mpi_procs") or record.get("mpi_procs") or 3)
    threads = int(pick("threads", "--j", "1"))
    return cmd, mpi, threads


def continue_job(
    job_dir: str | Path,
    *,
    auto_iter_max: int | None = None,
    hook: str | None = None,
    backend: str | None = None,
    template: str | Path | None = None,
    queue: str | None = None,
    extra: Mapping[int, str] | Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
    submit_command: str | None = None,
) -> JobHandle:
    """Continue a stopped or failed refinement from its last complete ``run_itNNN_optimiser.star``
    with the same hook (``RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE``) and config, locally or through
    the queue as it ran before (``backend`` "local" or "queue" overrides). The previous launch is
    kept in ``credgui_job.json`` under ``history``."""
    job = Path(os.path.abspath(job_dir))
    old = read_job_file(job)
    if old is None:
        adopt_job(job)
        old = read_job_file(job) or {}
    relion_cmd, mpi, threads = continue_command(job, auto_iter_max=auto_iter_max, extra_args=extra_args)
    if hook is None and old.get("hook"):
        hook = old["hook"]
    env_extra = _hook_env(job, hook)
    workers = [tuple(w) for w in old.get("workers") or []]
    env_extra.update(_worker_env(workers))  # the job's warm workers come back with it
    pipe = old.get("pipeline")
    if pipe and pipeline.set_status(project_dir_of(job), pipe["process"], "running"):
        # the continue writes run_ctNNN_* maps: RELION takes them as the job's output nodes
        pipeline.add_refine_output_nodes(job, Path(relion_cmd[relion_cmd.index("--o") + 1]).name)
        # RELION's GUI sets a continued job Running again and notes the command
        with open(job / "note.txt", "a") as fh:
            fh.write(f"\n ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n"
                     f"{shlex.join(relion_cmd)}\n ++++ \n")
        env_extra["CREDGUI_PIPELINER"] = pipe["pipeliner"]
    else:
        pipe = None
    use_queue = (backend == "queue") if backend is not None else old.get("backend") in ("slurm", "queue")
    _clear_markers(job)
    params = None
    record = _base_record(params, job, "local", env_extra)
    record["params"] = old.get("params")
    record["ground_truth"] = old.get("ground_truth")
    record["mask"] = old.get("mask")
    record["mpi_procs"] = mpi
    history = list(old.get("history") or [])
    history.append({k: v for k, v in old.items() if k != "history"})
    record["history"] = history
    record["continued_from"] = relion_cmd[2]
    record["pipeline"] = pipe
    record["workers"] = [list(w) for w in workers]
    if use_queue:
        script = render_submit_script(job, relion_cmd, mpi, threads, template, queue, extra, hook=hook,
                                      workers=workers)
        job_id, kind, command = submit_script(job, script, hook, submit_command)
        record.update(backend=kind, job_id=job_id, command=command, relion_command=relion_cmd,
                      submit_script=str(script))
        _write_job_file(job, record)
        return JobHandle(job, kind, job_id, tuple(command))
    command = mpirun_prefix(mpi) + relion_cmd
    record.update(command=command, relion_command=relion_cmd)
    proc = _start_local(job, command, env_extra)
    record.update(pid=proc.pid, pgid=proc.pid, sid=proc.pid, proc_start=_proc.proc_start_time(proc.pid), job_id=str(proc.pid))
    _write_job_file(job, record)
    return JobHandle(job, "local", str(proc.pid), tuple(command), proc.pid, proc.pid, proc)


def _find_queue_job(job: Path) -> str | None:
    """A Slurm job whose name is the RELION job name (``Refine3D/job001/``) or whose working
    directory is the project and whose output goes to this job's run.out."""
    out = _run_quiet(["squeue", "-h", "-o", "%i|%j|%Z|%o"], timeout=10)
    if out is None or out.returncode != 0:
        return None
    name = _job_rel(job) + "/"
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        if parts[1] == name or parts[1] == str(job) + "/" or str(job) in line:
            return parts[0].strip()
    return None


def adopt_job(job_dir: str | Path) -> JobHandle:
    """Take over a job started elsewhere (RELION's GUI, another credgui, a queue): detect its
    RELION processes on this host (``--o`` inside the directory) or its Slurm job, record them in
    ``credgui_job.json`` (backend "adopted") and return a handle. A directory credgui started
    already has its job file: its handle is returned as is."""
    job = Path(os.path.abspath(job_dir))
    if not job.is_dir():
        raise InputError(job, "job directory not found")
    record = read_job_file(job)
    if record is not None:
        pid = record.get("pid")
        return JobHandle(job, record.get("backend") or "adopted", record.get("job_id"),
                         tuple(record.get("command") or ()), pid, record.get("pgid"))
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
    record = _base_record(None, job, "adopted", {})
    record.update(
        hook=os.environ.get(HOOK_ENV),
        command=command,
        relion_command=command,
        pids=pids,
        queue_job_id=queue_id,
        start_time=min(starts) if starts else time.time(),
        log_offsets={"run.out": 0, "run.err": 0, "credgui_hook.jsonl": 0},
    )
    if pids:
        try:
            record["hook"] = _environ_of(pids[0]).get(HOOK_ENV, record["hook"])
        except OSError:
            pass
    _write_job_file(job, record)
    return JobHandle(job, "adopted", queue_id or (str(pids[0]) if pids else None), tuple(command),
                     pids[0] if pids else None, None)


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out
