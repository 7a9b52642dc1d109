"""Registering credgui's jobs in a RELION project's pipeline (``default_pipeline.star``).

Design (measured on RELION 3.1.3, see docs/DEVELOPING.md): RELION's own ``relion_pipeliner
--addJob Refine3D --addJobOptions ...`` does the registration: under RELION's lock it adds the
process, its input nodes (particles, reference, mask) and output nodes (``run_data.star``,
``run_half1_class001_unfil.mrc``, ``run_class001.mrc``), writes ``job.star`` and
``job_pipeline.star`` in the job directory, touches ``.Nodes/`` and advances
``_rlnPipeLineJobCounter``, in the format of the RELION that is installed (3.1's numeric types,
4.0/5.0's labels). It takes 0.1 s. It adds the job as *Scheduled*; credgui then runs it itself
(its own command, the hook's environment, its process control) and sets the status to Running
under the same lock (``.relion_lock/lock_default_pipeline.star``, a directory made with mkdir
as RELION's PipeLine::read does). ``note.txt`` gets RELION's "++++ Executing new job" block.
RELION's ``--pipeline_control`` then writes ``RELION_JOB_EXIT_*`` and RELION (its GUI, or
``relion_pipeliner --check_job_completion``, which credgui's launcher runs when RELION exits)
moves the job to Succeeded/Failed/Aborted and touches its output nodes.

Writing the whole format by hand was the alternative: it would have to follow three RELION
versions' formats and RELION's own output-node rules; only the one status field is edited here.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from credgui.errors import InputError
from credgui.relion.layout import project_dir_of
from credgui.relion.star import STAR_VERSION, write_star_atomic

PIPELINE = "default_pipeline.star"
LOCK_DIR = ".relion_lock"
LOCK_FILE = "lock_default_pipeline.star"
PIPELINER = "relion_pipeliner"
PIPELINER_ENV = "CREDGUI_RELION_PIPELINER"

# RELION 3.1 status numbers (pipeline_jobs.h) and 4.0/5.0 labels
_STATUS_INT = {"running": 0, "scheduled": 1, "succeeded": 2, "failed": 3, "aborted": 4}
_STATUS_LABEL = {"running": "Running", "scheduled": "Scheduled", "succeeded": "Succeeded",
                 "failed": "Failed", "aborted": "Aborted"}


def pipeliner() -> str | None:
    """``$CREDGUI_RELION_PIPELINER`` ("none" switches registration off), else relion_pipeliner
    on PATH, else None."""
    env = os.environ.get(PIPELINER_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "none", "0", "off") else env
    return shutil.which(PIPELINER)


@contextmanager
def relion_lock(project: str | Path, message: str, timeout: float = 120.0):
    """RELION's pipeline lock: ``mkdir .relion_lock`` (waits up to ``timeout`` s while another
    RELION or credgui holds it), the lock file with ``message``, released after the block."""
    proj = Path(project)
    lock = proj / LOCK_DIR
    deadline = time.monotonic() + timeout
    while True:
        try:
            lock.mkdir(mode=0o700)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise InputError(lock, f"RELION's pipeline lock is held for over {timeout:.0f} s (remove "
                                       f"{lock / LOCK_FILE} if no RELION is running)") from None
            time.sleep(0.5)
        except OSError as exc:
            if exc.errno == errno.EACCES:
                raise InputError(proj, "no write permission in the RELION project") from None
            raise
    try:
        (lock / LOCK_FILE).write_text(message + "\n")
        yield
    finally:
        (lock / LOCK_FILE).unlink(missing_ok=True)
        try:
            lock.rmdir()
        except OSError:
            pass


def job_counter(project: str | Path) -> int | None:
    """``_rlnPipeLineJobCounter`` of the project's pipeline (the next job's number), or None."""
    path = Path(project) / PIPELINE
    try:
        m = re.search(r"_rlnPipeLineJobCounter\s+(\d+)", path.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    return int(m[1]) if m else None


def _set_counter(text: str, value: int) -> str:
    return re.sub(r"(_rlnPipeLineJobCounter\s+)\d+", lambda m: f"{m[1]}{value}", text, count=1)


def processes(project: str | Path) -> dict[str, str]:
    """{process name: status} of the pipeline (status as RELION wrote it: 3.1's number or
    4.0/5.0's label)."""
    path = Path(project) / PIPELINE
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    block = _block(text, "pipeline_processes")
    if block is None:
        return {}
    cols, rows = block
    status_col = next((i for i, c in enumerate(cols) if c.startswith("_rlnPipeLineProcessStatus")), None)
    return {r[0]: (r[status_col] if status_col is not None else "") for _, r in rows}


def _block(text: str, name: str) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """(column labels, [(line index, tokens)]) of the loop in ``data_<name>``."""
    lines = text.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == f"data_{name}")
    except StopIteration:
        return None
    cols: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    for i in range(start + 1, len(lines)):
        s = lines[i].strip()
        if s.startswith("data_"):
            break
        if not s or s.startswith("#") or s.startswith("loop_"):
            continue
        if s.startswith("_"):
            cols.append(s.split()[0])
            continue
        rows.append((i, shlex.split(s)))
    return cols, rows


def set_status(project: str | Path, process: str, status: str) -> bool:
    """Set ``process``'s status (running, succeeded, failed, aborted) under RELION's lock;
    False when the process is not in the pipeline."""
    proj = Path(project)
    path = proj / PIPELINE
    with relion_lock(proj, f"credgui: {process} {status}"):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return False
        block = _block(text, "pipeline_processes")
        if block is None:
            return False
        cols, rows = block
        if "_rlnPipeLineProcessStatusLabel" in cols:
            col, value = cols.index("_rlnPipeLineProcessStatusLabel"), _STATUS_LABEL[status]
        elif "_rlnPipeLineProcessStatus" in cols:
            col, value = cols.index("_rlnPipeLineProcessStatus"), str(_STATUS_INT[status])
        else:
            raise InputError(path, "pipeline_processes has no status column")
        lines = text.splitlines()
        for i, tokens in rows:
            if tokens and tokens[0] == process and len(tokens) > col:
                tokens[col] = value
                lines[i] = " ".join(shlex.quote(t) if (" " in t or not t) else t for t in tokens)
                write_star_atomic(path, "\n".join(lines) + "\n")
                return True
    return False


def _job_options(options: dict[str, str]) -> str:
    bad = [k for k, v in options.items() if ";" in v or "\n" in v]
    if bad:
        raise InputError(None, f"RELION job option {bad[0]} may not hold ';' or a newline: {options[bad[0]]!r}")
    return ";".join(f"{k} == {v}" for k, v in options.items())


def register_job(job_dir: str | Path, options: dict[str, str], command: list[str],
                 job_type: str = "Refine3D", timeout: float = 60.0) -> dict | None:
    """Register ``job_dir`` (``PROJECT/Refine3D/jobNNN``) in its project's pipeline through
    ``relion_pipeliner --addJob``, set it Running and append RELION's note to ``note.txt``.

    ``options``: RELION's job options (``fn_img``, ``fn_ref``, ``other_args``, ...; see
    RELION's job.star). Returns {"pipeliner", "process", "counter"} or None when no
    relion_pipeliner is installed. A project without ``default_pipeline.star`` gets one (as
    RELION's GUI does when it opens a new project). InputError when RELION's counter or
    pipeline disagrees with the job (nothing is registered then)."""
    program = pipeliner()
    if program is None:
        return None
    job = Path(os.path.abspath(job_dir))
    proj = project_dir_of(job)
    m = re.fullmatch(r"job(\d+)", job.name)
    if not m or job.parent.name != job_type:
        raise InputError(job, f"not a RELION job directory name ({job_type}/jobNNN)")
    number = int(m[1])
    name = f"{job_type}/{job.name}/"
    path = proj / PIPELINE
    with relion_lock(proj, f"credgui: reserving {name}"):
        if not path.exists():
            write_star_atomic(path, f"\n{STAR_VERSION}\n\ndata_pipeline_general\n\n"
                                    f"_rlnPipeLineJobCounter                       {number}\n \n")
        text = path.read_text()
        counter = job_counter(proj)
        if counter is None:
            raise InputError(path, "no _rlnPipeLineJobCounter: not a RELION pipeline")
        if name in processes(proj):
            raise InputError(path, f"{name} is already a job of this RELION project")
        if counter > number:
            raise InputError(path, f"RELION's job counter is at {counter}: job {number} may be RELION's; "
                                   "start the job in a new job directory")
        if counter < number:  # directories beyond the counter exist: RELION must skip them
            write_star_atomic(path, _set_counter(text, number))
    options = dict(options)
    while True:
        cmd = [*shlex.split(program), "--addJob", job_type, "--addJobOptions", _job_options(options)]
        try:
            out = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InputError(path, f"{program} --addJob failed: {exc}") from None
        # an option this RELION's job type does not know (they differ between 3.1, 4.0, 5.0):
        # left out, RELION's default is recorded instead
        unknown = re.search(r"Job does not contain label:\s*(\S+)", out.stderr + out.stdout)
        if out.returncode != 0 and unknown and unknown[1] in options:
            del options[unknown[1]]
            continue
        break
    if out.returncode != 0:
        err = [l.strip() for l in (out.stderr + out.stdout).splitlines() if "ERROR" in l and l.strip() != "ERROR:"]
        raise InputError(path, f"{program} --addJob failed: {(err[-1] if err else out.stderr.strip()[-200:])}")
    if name not in processes(proj):
        raise InputError(path, f"{program} registered another job than {name} (another RELION added one "
                               "at the same time?); the credgui job was not started")
    set_status(proj, name, "running")
    with open(job / "note.txt", "a") as fh:
        fh.write(f"\n ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s): \n"
                 f"{shlex.join(command)}\n ++++ \n")
    return {"pipeliner": program, "process": name, "counter": job_counter(proj)}


_REFINE_NODES = (  # (suffix, RELION 3.1 node type, RELION 4.0/5.0 node label): getOutputNodesRefine
    ("_data.star", 3, "ParticlesData.star.relion.refine3d"),
    ("_half1_class001_unfil.mrc", 10, "DensityMap.mrc.relion.halfmap.refine3d"),
    ("_class001.mrc", 6, "DensityMap.mrc.relion.refine3d"),
)


def add_refine_output_nodes(job_dir: str | Path, root: str) -> Path:
    """Name a continued refinement's outputs (``ROOT_data.star``, ``ROOT_half1_class001_unfil.mrc``,
    ``ROOT_class001.mrc`` for ``root`` = ``run_ct12``, as RELION's GUI names a continue) in
    ``JOB/RELION_OUTPUT_NODES.star``: RELION adds these nodes to the pipeline when the job has
    finished (PipeLine::getOutputNodesFromStarFile), in the pipeline's own node format."""
    job = Path(os.path.abspath(job_dir))
    proj = project_dir_of(job)
    rel = f"{job.parent.name}/{job.name}/{root}"
    text = ""
    try:
        text = (proj / PIPELINE).read_text(errors="replace")
    except FileNotFoundError:
        pass
    labels = "_rlnPipeLineNodeTypeLabel" in text or "_rlnPipeLineProcessTypeLabel" in text
    column = "_rlnPipeLineNodeTypeLabel" if labels else "_rlnPipeLineNodeType"
    rows = [f"{rel}{suffix} {label if labels else number}" for suffix, number, label in _REFINE_NODES]
    path = job / "RELION_OUTPUT_NODES.star"
    write_star_atomic(path, f"\n{STAR_VERSION}\n\ndata_output_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n"
                            f"{column} #2\n" + "\n".join(rows) + "\n \n")
    return path


def check_completion(project: str | Path, program: str | None = None, timeout: float = 60.0) -> bool:
    """``relion_pipeliner --check_job_completion`` in the project (what RELION's GUI does on
    its refresh): finished jobs (``RELION_JOB_EXIT_*``) get their final status and nodes."""
    program = program or pipeliner()
    if program is None:
        return False
    try:
        out = subprocess.run([*shlex.split(program), "--check_job_completion"], cwd=project,
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0
