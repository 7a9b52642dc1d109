"""Queue submission with RELION 3.1's template conventions (src/pipeline_jobs.cpp): the
XXX...XXX variables, the hook's environment exported in the script, the submit command."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from credgui._io import write_text_atomic
from credgui.errors import InputError
from credgui.jobs.command import hook_env, relion_command
from credgui.jobs.jobfile import EXIT_FILE, SUBMIT_SCRIPT, LaunchError, job_rel, project_dir_of, rel_path
from credgui.jobs.params import RefineParams, job_workers
from credgui.jobs.workers import WORKERS_START, WORKERS_STOP, worker_env
from credgui.resources import resource_path

__all__ = ["default_template", "parse_job_id", "queue_name", "render_submit_script", "submit_script",
           "write_submit_script"]


def default_template() -> Path:
    """``$RELION_QSUB_TEMPLATE`` if set, else credgui's shipped Slurm template."""
    env = os.environ.get("RELION_QSUB_TEMPLATE")
    return Path(env) if env else resource_path("templates", "slurm.sh")


def extra_values(extra: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    """XXXextraNXXX values: given ``extra`` (1-based mapping or a sequence), else
    ``$RELION_QSUB_EXTRAn_DEFAULT`` for the first ``$RELION_QSUB_EXTRA_COUNT`` (default 2)."""
    try:
        count = int(os.environ.get("RELION_QSUB_EXTRA_COUNT", "2"))
    except ValueError:
        count = 2
    given: dict[int, str] = {}
    if isinstance(extra, Mapping):
        given = {int(k): str(v) for k, v in extra.items()}
    elif extra is not None:
        given = {i + 1: str(v) for i, v in enumerate(extra)}
    return {
        i: given[i] if i in given else os.environ.get(f"RELION_QSUB_EXTRA{i}_DEFAULT", "")
        for i in range(1, max(count, max(given, default=0)) + 1)
    }


def is_csh(lines: list[str]) -> bool:
    return bool(lines) and lines[0].startswith("#!") and "csh" in lines[0]


def write_submit_script(
    params: RefineParams,
    template: str | Path | None = None,
    queue: str | None = None,
    extra: Mapping[int, str] | Sequence[str] | None = None,
    *,
    hook: str | None = None,
) -> Path:
    """Write ``JOB/run_submit.script`` from a RELION 3.1 queue template and return its path.

    Substitutes XXXcommandXXX (``relion_command(params)``, without launcher: the template holds
    it), XXXmpinodesXXX, XXXthreadsXXX, XXXcoresXXX, XXXdedicatedXXX (``$RELION_MINIMUM_DEDICATED``,
    default 1), XXXnodesXXX (ceil(cores / dedicated)), XXXnameXXX (``Refine3D/job001/``),
    XXXoutfileXXX / XXXerrfileXXX (``<name>run.out`` / ``run.err``), XXXqueueXXX (``queue``,
    else ``$RELION_QUEUE_NAME``, else RELION's default ``openmpi``), XXXextraNXXX (``extra``, else
    ``$RELION_QSUB_EXTRAn_DEFAULT``; unset extras become empty rather than staying literal).
    After the template's directives it exports the hook command and config (so they reach the
    ranks on any node) and changes to the project directory; sh-family scripts end by writing
    the exit code to ``credgui_exit_status``.
    """
    job = Path(os.path.abspath(params.job_dir))
    return render_submit_script(
        job, relion_command(params), params.mpi_procs, params.threads, template, queue, extra, hook=hook,
        workers=job_workers(params),
    )


def render_submit_script(
    job_dir: Path,
    command: Sequence[str],
    mpi_procs: int,
    threads: int,
    template: str | Path | None = None,
    queue: str | None = None,
    extra: Mapping[int, str] | Sequence[str] | None = None,
    *,
    hook: str | None = None,
    workers: Sequence[Sequence[str]] = (),
) -> Path:
    """``write_submit_script`` for any relion command (used by ``continue_job`` too).
    ``workers``: [(socket, device)] of warm workers the script runs around RELION."""
    template = Path(template) if template is not None else default_template()
    try:
        text = template.read_text()
    except OSError as exc:
        raise InputError(template, f"cannot read queue template ({exc.strerror})") from None
    job = Path(os.path.abspath(job_dir))
    name = job_rel(job) + "/"
    cores = mpi_procs * threads
    try:
        dedicated = max(1, int(os.environ.get("RELION_MINIMUM_DEDICATED", "1")))
    except ValueError:
        dedicated = 1
    values = {
        "XXXmpinodesXXX": str(mpi_procs),
        "XXXthreadsXXX": str(threads),
        "XXXcoresXXX": str(cores),
        "XXXdedicatedXXX": str(dedicated),
        "XXXnodesXXX": str(math.ceil(cores / dedicated)),
        "XXXnameXXX": name,
        "XXXoutfileXXX": name + "run.out",
        "XXXerrfileXXX": name + "run.err",
        "XXXqueueXXX": queue_name(queue),
        "XXXcommandXXX": shlex.join(command),
    }
    for i, v in extra_values(extra).items():
        values[f"XXXextra{i}XXX"] = v
    pattern = re.compile("|".join(re.escape(k) for k in sorted(values, key=len, reverse=True)))
    text = pattern.sub(lambda m: values[m.group(0)], text)
    text = re.sub(r"XXXextra\d+XXX", "", text)
    left = sorted(set(re.findall(r"XXX[A-Za-z0-9]+XXX", text)))
    if left:
        raise InputError(template, f"unknown template variable(s) {', '.join(left)}")

    lines = text.splitlines()
    csh = is_csh(lines)
    env = hook_env(job, hook)
    proj = project_dir_of(job)
    # insert after the shebang and the leading directive/comment block (#SBATCH, #PBS, #$ ...)
    at = 0
    while at < len(lines) and (lines[at].startswith("#") or not lines[at].strip()):
        at += 1
    if csh:
        block = [f"setenv {k} {shlex.quote(v)}" for k, v in env.items()]
    else:
        block = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    block = ["# added by credgui: the M-step hook for RELION's --external_reconstruct", *block,
             f"cd {shlex.quote(str(proj))}"]
    if workers and not csh:
        block += ["# added by credgui: the job's warm denoiser worker(s), on this node, for this job only",
                  *[f"export {k}={shlex.quote(v)}" for k, v in worker_env(workers).items()], WORKERS_START]
    lines[at:at] = block
    if not csh:
        if workers:
            lines += ["credgui_rc=$?", WORKERS_STOP, "(exit $credgui_rc)"]
        exit_file = shlex.quote(str(job / EXIT_FILE))
        lines += [
            "# added by credgui: the exit code, for credgui's job status",
            "credgui_rc=$?",
            f'printf "%s\\n" "$credgui_rc" > {exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}',
            'exit "$credgui_rc"',
        ]
    script = job / SUBMIT_SCRIPT
    job.mkdir(parents=True, exist_ok=True)
    write_text_atomic(script, "\n".join(lines) + "\n", mode=0o755)
    return script


def queue_name(queue: str | None = None) -> str:
    """``queue``, else ``$RELION_QUEUE_NAME``, else RELION's default ``openmpi``."""
    return queue if queue is not None else os.environ.get("RELION_QUEUE_NAME", "openmpi")


def submit_script(job_dir: Path, script: Path, hook: str | None = None, submit_command: str | None = None) -> tuple[str | None, str, list[str]]:
    """Submit ``script`` from the project directory; (job id, backend, command)."""
    job = Path(job_dir)
    qsub = submit_command or os.environ.get("RELION_QSUB_COMMAND") or "sbatch"
    command = shlex.split(qsub) + [rel_path(script, project_dir_of(job))]
    env = dict(os.environ)
    env.update(hook_env(job, hook))
    try:
        out = subprocess.run(
            command, cwd=project_dir_of(job), env=env, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"{shlex.join(command)}: {exc}") from None
    output = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise LaunchError(f"{shlex.join(command)} failed ({out.returncode}): {' '.join(output.split())[:300]}")
    job_id = parse_job_id(out.stdout) or parse_job_id(output)
    backend = "slurm" if Path(command[0]).name == "sbatch" else "queue"
    return job_id, backend, command


JOB_ID_RE = re.compile(r"Submitted batch job (\d+)|\b(\d+)\b")


def parse_job_id(output: str) -> str | None:
    """The job id in a submit command's output (``Submitted batch job N``, else the first integer)."""
    m = JOB_ID_RE.search(output)
    if not m:
        return None
    return m.group(1) or m.group(2)
