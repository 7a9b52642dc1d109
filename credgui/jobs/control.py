"""Continue and adopt refinement jobs (stopping them: ``credgui.jobs.stop``, re-exported here).

Built on the public names of the modules below it: ``jobfile`` (the record), ``command``,
``mpi``, ``local``, ``queue``, ``adopt``, ``stop``, ``watch`` and ``handle``."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from credgui.errors import InputError
from credgui.jobs.adopt import adopt_record
from credgui.jobs.command import HOOK_ENV, RELION_REFINE_MPI, hook_env
from credgui.jobs.handle import JobHandle
from credgui.jobs.jobfile import (
    JOB_FILE,
    LaunchError,
    clear_markers,
    new_record,
    project_dir_of,
    read_job_file,
    rel_path,
    write_job_file,
)
from credgui.jobs.local import launcher_fields, start_local
from credgui.jobs.mpi import mpirun_prefix
from credgui.jobs.params import refuse_blush
from credgui.jobs.queue import render_submit_script, submit_script
from credgui.jobs.stop import stop_job
from credgui.jobs.watch import scan_job
from credgui.jobs.workers import worker_env
from credgui.relion import pipeline
from credgui.relion.star_readers import read_optimiser_star

__all__ = ["stop_job", "continue_job", "adopt_job", "continue_command"]


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
    record = read_job_file(job)
    params = (record.params if record else None) or {}
    proj = Path((record.project_dir if record else None) or project_dir_of(job))
    line = opt.command_line

    def pick(key: str, option: str, default: str) -> str:
        if params.get(key) is not None:
            value = params[key]
            return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        return _opt_value(line, option) or default

    rel_job = rel_path(job, proj)
    cmd = [
        RELION_REFINE_MPI,
        "--continue", rel_path(last.optimiser_star, proj),
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
        refuse_blush(job / JOB_FILE, [*shlex.split(line), *extra_args])
    cmd += ["--pipeline_control", f"{rel_job}/", *extra_args]
    mpi = int(params.get("mpi_procs") or (record.mpi_procs if record else None) or 3)
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
    old = adopt_record(job)
    relion_cmd, mpi, threads = continue_command(job, auto_iter_max=auto_iter_max, extra_args=extra_args)
    if hook is None and old.hook:
        hook = old.hook
    env_extra = hook_env(job, hook)
    workers = old.workers
    env_extra.update(worker_env(workers))  # the job's warm workers come back with it
    pipe = old.pipeline
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
    use_queue = (backend == "queue") if backend is not None else old.backend in ("slurm", "queue")
    clear_markers(job)
    earlier = {k: v for k, v in old.to_dict().items() if k != "history"}
    record = new_record(
        job, "local", hook=env_extra.get(HOOK_ENV), params=old.params, ground_truth=old.ground_truth,
        mask=old.mask, mpi_procs=mpi, history=(*old.history, earlier), continued_from=relion_cmd[2],
        pipeline=pipe, workers=workers, relion_command=tuple(relion_cmd),
    )
    if use_queue:
        script = render_submit_script(job, relion_cmd, mpi, threads, template, queue, extra, hook=hook,
                                      workers=workers)
        job_id, kind, command = submit_script(job, script, hook, submit_command)
        write_job_file(job, dataclasses.replace(record, backend=kind, job_id=job_id, command=tuple(command),
                                                submit_script=str(script)))
        return JobHandle(job, kind, job_id, tuple(command))
    command = mpirun_prefix(mpi) + relion_cmd
    proc = start_local(job, command, env_extra)
    write_job_file(job, dataclasses.replace(record, command=tuple(command), **launcher_fields(proc)))
    return JobHandle(job, "local", str(proc.pid), tuple(command), proc.pid, proc.pid, proc)




def adopt_job(job_dir: str | Path) -> JobHandle:
    """Take over a job started elsewhere (RELION's GUI, another credgui, a queue): detect its
    RELION processes on this host (``--o`` inside the directory) or its Slurm job, record them in
    ``credgui_job.json`` (backend "adopted") and return a handle. A directory credgui started
    already has its job file: its handle is returned as is."""
    job = Path(os.path.abspath(job_dir))
    record = read_job_file(job) if job.is_dir() else None
    if record is not None:
        return JobHandle(job, record.backend or "adopted", record.job_id, record.command, record.pid, record.pgid)
    record = adopt_record(job)
    pid = record.pids[0] if record.pids else None
    return JobHandle(job, "adopted", record.queue_job_id or (str(pid) if pid else None), record.command, pid, None)
