"""Run and follow RELION refinement jobs: launch (local mpirun or a queue template), stop,
continue, adopt, and watch job directories. Imports no Qt and nothing heavy."""

from credgui.jobs.control import adopt_job, continue_job, stop_job
from credgui.jobs.launch import (
    JobHandle,
    LaunchError,
    RefineParams,
    hook_executable,
    launch_local,
    local_command,
    next_job_dir,
    relion_command,
    submit_queue,
    write_submit_script,
)
from credgui.jobs.watch import JobState, scan_job, watch_job

__all__ = [
    "JobHandle",
    "JobState",
    "LaunchError",
    "RefineParams",
    "adopt_job",
    "continue_job",
    "hook_executable",
    "launch_local",
    "local_command",
    "next_job_dir",
    "relion_command",
    "scan_job",
    "stop_job",
    "submit_queue",
    "watch_job",
    "write_submit_script",
]
