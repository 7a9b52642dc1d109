"""Names and rules of a RELION job directory that several floors share (relion/, jobs/, the hook,
the GUI), so each is written once: RELION's exit markers, credgui's job record and hook log, and
the project-directory rule. Imports nothing but the standard library."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["EXIT_ABORTED", "EXIT_FAILURE", "EXIT_SUCCESS", "HOOK_LOG", "JOB_FILE", "project_dir_of"]

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
"""What RELION touches in JOB when it exits with ``--pipeline_control JOB/``."""

HOOK_LOG = "credgui_hook.jsonl"
"""The hook's log: one JSON line per call (``credgui.relion.hooklog``, DEVELOPING.md)."""

JOB_FILE = "credgui_job.json"
"""How credgui started a job (``credgui.jobs.jobfile.JobRecord``)."""


def project_dir_of(job_dir: str | Path) -> Path:
    """RELION's working directory for a job: ``P`` for ``P/Type/jobNNN``, else the parent."""
    job = Path(os.path.abspath(job_dir))
    if re.fullmatch(r"job\d+", job.name):
        return job.parent.parent
    return job.parent
