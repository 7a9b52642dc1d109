"""Start RELION 3.1 3D auto-refinements whose M-step is credgui's hook (CW-RED).

A job is a RELION job directory (``Refine3D/jobNNN/`` in a RELION project). RELION runs with the
project directory as its working directory, as RELION's own GUI does, so every path inside its
STAR files (``--o Refine3D/job001/run``, the image stacks named by ``_rlnImageName``) is
relative to the project directory.

Files credgui adds to the job directory (names in ``credgui.jobs.jobfile``):
- ``credgui.toml``: the hook's settings (``credgui.config.write_config``).
- ``credgui_job.json``: how the job was started (``credgui.jobs.jobfile.JobRecord``).
- ``credgui_exit_status``: the launcher's exit code (local runs, and queue scripts in sh/bash).
- ``credgui_stopped``: written by ``stop_job`` before it kills the job.
- ``run.out`` / ``run.err``: RELION's stdout/stderr (appended, as RELION's GUI does).
- ``run_submit.script``: the queue script (queue submission).
RELION itself is run with ``--pipeline_control JOB/`` so it touches ``RELION_JOB_EXIT_SUCCESS``
or ``RELION_JOB_EXIT_FAILURE`` in the job directory when it exits.

The pieces: ``jobfile`` (names, the job record, project directory), ``params`` (parameters and
validation), ``command`` (relion_refine's command line, the hook's environment, pipeline
registration), ``mpi`` (the MPI launcher), ``workers`` (warm workers), ``local`` (the local
launcher), ``queue`` (templates and submission), ``handle`` (``JobHandle``). This module
starts jobs from them and re-exports their public names (callers import them from here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from credgui.jobs.command import (
    HOOK_ENV,
    HOOK_NAME,
    RELION_REFINE_MPI,
    hook_env,
    hook_executable,
    register_job,
    relion_command,
    relion_job_options,
)
from credgui.jobs.handle import JobHandle
from credgui.jobs.jobfile import (
    EXIT_FILE,
    JOB_FILE,
    STOP_FILE,
    SUBMIT_SCRIPT,
    WORKER_SOCKET,
    JobRecord,
    LaunchError,
    clear_markers,
    new_record,
    next_job_dir,
    project_dir_of,
    read_job_file,
    write_job_file,
)
from credgui.jobs.local import launcher_fields, start_local
from credgui.jobs.mpi import local_command, mpirun_prefix
from credgui.jobs.params import RefineParams, job_workers, prepare_job_dir, refuse_blush, validate_params
from credgui.jobs.queue import default_template, queue_name, render_submit_script, submit_script, write_submit_script
from credgui.jobs.workers import relion_gpu_devices, worker_env, worker_socket_for

__all__ = [
    "LaunchError",
    "RefineParams",
    "JobHandle",
    "JobRecord",
    "JOB_FILE",
    "EXIT_FILE",
    "STOP_FILE",
    "SUBMIT_SCRIPT",
    "WORKER_SOCKET",
    "HOOK_ENV",
    "HOOK_NAME",
    "RELION_REFINE_MPI",
    "project_dir_of",
    "next_job_dir",
    "hook_executable",
    "relion_command",
    "relion_job_options",
    "relion_gpu_devices",
    "worker_socket_for",
    "job_workers",
    "mpirun_prefix",
    "local_command",
    "validate_params",
    "launch_local",
    "default_template",
    "write_submit_script",
    "render_submit_script",
    "submit_script",
    "queue_name",
    "submit_queue",
    "read_job_file",
    "refuse_blush",
]


def launch_local(params: RefineParams, *, hook: str | None = None) -> JobHandle:
    """Validate, prepare the job directory and start RELION locally under mpirun, in its own
    process group, with stdout/stderr appended to ``JOB/run.out`` / ``JOB/run.err``.

    ``hook``: the external-reconstruct command (a shell command line); default the absolute
    path of ``credgui-reconstruct``. Returns at once; follow with ``JobHandle.wait`` or
    ``credgui.jobs.watch.watch_job``.
    """
    params = validate_params(params)
    prepare_job_dir(params)
    job = params.job_dir
    env_extra = hook_env(job, hook)
    workers = job_workers(params)
    env_extra.update(worker_env(workers))
    command = local_command(params)
    clear_markers(job)
    pipe = register_job(params, command, env_extra)
    record = new_record(  # before the launcher starts: its start time and log offsets
        job, "local", **params.record_fields(), hook=env_extra.get(HOOK_ENV), command=tuple(command),
        relion_command=tuple(relion_command(params)), pipeline=pipe, workers=tuple(workers),
    )
    proc = start_local(job, command, env_extra)
    write_job_file(job, dataclasses.replace(record, **launcher_fields(proc)))
    return JobHandle(job, "local", str(proc.pid), tuple(command), proc.pid, proc.pid, proc)


def submit_queue(
    params: RefineParams,
    template: str | Path | None = None,
    queue: str | None = None,
    extra: Mapping[int, str] | Sequence[str] | None = None,
    *,
    hook: str | None = None,
    submit_command: str | None = None,
) -> JobHandle:
    """Validate, write the queue script and submit it from the project directory with
    ``submit_command`` (else ``$RELION_QSUB_COMMAND``, else ``sbatch``). The job id is parsed
    from the submit command's output (``Submitted batch job N``, or the first integer)."""
    params = validate_params(params)
    prepare_job_dir(params)
    job = params.job_dir
    clear_markers(job)
    script = write_submit_script(params, template, queue, extra, hook=hook)
    pipe = register_job(params, relion_command(params), {})
    job_id, backend, command = submit_script(job, script, hook, submit_command)
    record = new_record(
        job, backend, **params.record_fields(), hook=hook_env(job, hook).get(HOOK_ENV), pipeline=pipe,
        command=tuple(command), relion_command=tuple(relion_command(params)), job_id=job_id,
        submit_script=str(script), queue=queue_name(queue), workers=tuple(job_workers(params)),
    )
    write_job_file(job, record)
    return JobHandle(job, backend, job_id, tuple(command))
