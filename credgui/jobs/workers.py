"""The job's warm denoiser workers: which devices (RELION's ``--gpu``), which sockets, and the
sh snippets the local launcher and the queue script run around RELION to start and stop them."""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from credgui.errors import InputError
from credgui.jobs.jobfile import WORKER_SOCKET

__all__ = ["WORKERS_START", "WORKERS_STOP", "relion_gpu_devices", "worker_env", "worker_socket_for"]


def relion_gpu_devices(args: Sequence[str]) -> list[str] | None:
    """The torch devices of RELION's ``--gpu`` in ``args``: None without ``--gpu``; ``--gpu``
    alone (RELION: all GPUs) -> ["cuda"]; ``--gpu 0:1`` (one group per MPI worker rank, ','
    between a rank's threads) -> ["cuda:0", "cuda:1"] (the first device of each rank)."""
    args = list(args)
    if "--gpu" not in args:
        return None
    i = args.index("--gpu")
    value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
    devices = []
    for group in value.split(":"):
        first = group.split(",")[0].strip()
        if first:
            if not first.isdigit():
                raise InputError(None, f"--gpu {value!r}: device ids must be numbers like 0:1")
            devices.append(f"cuda:{first}")
    return devices or ["cuda"]


def worker_socket_for(job_dir: Path, half: int = 1) -> str:
    """The worker socket of a job: ``JOB/credgui_worker.sock`` (``_half2`` for half 2's own
    device), or under /tmp/credgui-UID/ when the job's path is too long for a Unix socket."""
    path = str(Path(os.path.abspath(job_dir)) / WORKER_SOCKET)
    if len(os.fsencode(path)) > 94:
        digest = hashlib.sha1(path.encode()).hexdigest()[:16]
        path = f"/tmp/credgui-{os.getuid()}/{digest}.sock"
    return path if half == 1 else path[: -len(".sock")] + "_half2.sock"  # the hook's rule



def worker_env(workers: Sequence[Sequence[str]]) -> dict[str, str]:
    """The environment the launcher's snippets read: the workers and the command that runs one."""
    if not workers:
        return {}
    return {"CREDGUI_WORKERS": " ".join(f"{s}|{d}" for s, d in workers),
            "CREDGUI_WORKER_CMD": shlex.join([sys.executable, "-m", "credgui.cli", "worker"])}


# sh: start the job's warm workers (in the job's session: stopping the job stops them), and
# give each up to 60 s to listen, so that RELION's first M-step already finds it ...
WORKERS_START = ('for w in $CREDGUI_WORKERS; do s="${w%%|*}"; mkdir -p "$(dirname "$s")"; '
                  '$CREDGUI_WORKER_CMD --socket "$s" --device "${w#*|}" --idle-timeout 172800 '
                  '>>"$s.log" 2>&1 & done; '
                  'for w in $CREDGUI_WORKERS; do n=0; while [ ! -S "${w%%|*}" ] && [ $n -lt 600 ]; do '
                  'sleep 0.1; n=$((n+1)); done; done')
# ... and stop them when RELION has exited
WORKERS_STOP = 'for w in $CREDGUI_WORKERS; do $CREDGUI_WORKER_CMD --socket "${w%%|*}" --stop >/dev/null 2>&1; done'

