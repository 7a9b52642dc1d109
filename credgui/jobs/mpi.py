"""The MPI launcher a local job runs under (``$RELION_MPIRUN``, Open MPI's flags probed once)."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from pathlib import Path

from credgui.jobs.command import relion_command
from credgui.jobs.params import RefineParams

__all__ = ["local_command", "mpirun_prefix"]


@functools.lru_cache(maxsize=8)
def is_open_mpi(launcher: str) -> bool:
    try:
        out = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "open mpi" in (out.stdout + out.stderr).lower() or "open-mpi" in (out.stdout + out.stderr).lower()


def mpirun_prefix(n: int) -> list[str]:
    """The MPI launcher for ``n`` ranks: ``$RELION_MPIRUN`` (default ``mpirun``), plus, for Open
    MPI, ``--oversubscribe`` (more ranks than cores is normal for RELION's idle leader) and
    ``--allow-run-as-root`` when running as root."""
    launcher = shlex.split(os.environ.get("RELION_MPIRUN", "") or "mpirun")
    cmd = list(launcher)
    if Path(launcher[0]).name in ("mpirun", "mpiexec", "orterun") and is_open_mpi(launcher[0]):
        cmd.append("--oversubscribe")
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    return cmd + ["-n", str(n)]


def local_command(params: RefineParams) -> list[str]:
    """The full local command: the MPI launcher, then ``relion_command(params)``."""
    return mpirun_prefix(params.mpi_procs) + relion_command(params)

