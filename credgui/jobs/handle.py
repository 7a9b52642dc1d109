"""``JobHandle``: what launching, continuing or adopting a job returns; it follows the job
(``watch``) and stops it (``stop``). Above watch and stop, below launch and control."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from credgui.jobs.stop import stop_job
from credgui.jobs.watch import JobState, scan_job

__all__ = ["JobHandle"]


@dataclass(frozen=True)
class JobHandle:
    """A started (or adopted) job. ``backend``: "local", "slurm", "queue" (another scheduler)
    or "adopted". ``job_id``: the pid (local) or the queue's job id."""

    job_dir: Path
    backend: str
    job_id: str | None
    command: tuple[str, ...]
    pid: int | None = None
    pgid: int | None = None
    process: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def state(self) -> JobState:
        """The job's current ``credgui.jobs.watch.JobState``."""
        self.poll()
        return scan_job(self.job_dir)

    def poll(self) -> int | None:
        """Reap the local launcher if it ended (so it leaves no zombie); its exit code or None."""
        return self.process.poll() if self.process is not None else None

    def wait(self, timeout: float | None = None, poll_s: float = 1.0) -> JobState:
        """Block until the job has ended (status not "running"); returns the final JobState.
        TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            state = scan_job(self.job_dir)
            if state.status not in ("running",):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.job_dir}: still running after {timeout} s")
            time.sleep(poll_s)

    def stop(self, timeout: float = 15.0) -> JobState:
        """``stop_job`` on the job, then reap the local launcher."""
        state = stop_job(self.job_dir, timeout=timeout)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return state

