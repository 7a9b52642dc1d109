"""Start a job's command locally: in its own session under /bin/sh, with the warm workers
around it, its exit code written to ``credgui_exit_status`` and RELION's pipeline told when
it ends; stdout/stderr appended to ``run.out`` / ``run.err`` as RELION's GUI does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from credgui.jobs import _proc
from credgui.jobs.jobfile import EXIT_FILE, project_dir_of
from credgui.jobs.workers import WORKERS_START, WORKERS_STOP

__all__ = ["WRAPPER", "launcher_fields", "start_local"]


WRAPPER = (WORKERS_START + '; "$@"; rc=$?; ' + WORKERS_STOP + '; '
           'printf "%s\\n" "$rc" > "$CREDGUI_EXIT_FILE.tmp" && mv -f "$CREDGUI_EXIT_FILE.tmp" "$CREDGUI_EXIT_FILE"; '
           # a job in RELION's pipeline: let RELION record its end (status, output nodes)
           'if [ -n "$CREDGUI_PIPELINER" ]; then $CREDGUI_PIPELINER --check_job_completion >/dev/null 2>&1; fi; '
           'exit "$rc"')


def start_local(job_dir: Path, command: list[str], env_extra: Mapping[str, str]) -> subprocess.Popen:
    """Run ``command`` from the project directory in a new session (``stop_job`` ends all of it)."""
    proj = project_dir_of(job_dir)
    env = dict(os.environ)
    for key in ("CREDGUI_PIPELINER", "CREDGUI_WORKERS"):  # only this job's own
        env.pop(key, None)
    env.update(env_extra)
    env["CREDGUI_EXIT_FILE"] = str(job_dir / EXIT_FILE)
    with open(job_dir / "run.out", "ab") as out, open(job_dir / "run.err", "ab") as err:
        return subprocess.Popen(
            ["/bin/sh", "-c", WRAPPER, "credgui-refine", *command],
            cwd=proj,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: stop_job kills all of it
        )


def launcher_fields(proc: subprocess.Popen) -> dict[str, Any]:
    """The job record's fields for a launcher ``start_local`` started: it leads its own session
    and process group; ``proc_start`` tells it from a later process with the same pid."""
    return dict(pid=proc.pid, pgid=proc.pid, sid=proc.pid, proc_start=_proc.proc_start_time(proc.pid),
                job_id=str(proc.pid))
