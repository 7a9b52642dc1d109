"""What RELION is told: the relion_refine_mpi command line, the hook's environment, and the
job options registered in the project's pipeline (RELION's GUI then shows the job)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from credgui.config import CONFIG_ENV, CONFIG_NAME
from credgui.jobs.jobfile import LaunchError, job_rel, project_dir_of, rel_path
from credgui.jobs.params import RefineParams

__all__ = ["HOOK_ENV", "HOOK_NAME", "RELION_REFINE_MPI", "fmt_num", "hook_env", "hook_executable",
           "register_job", "relion_command", "relion_job_options"]

HOOK_ENV = "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE"
HOOK_NAME = "credgui-reconstruct"
RELION_REFINE_MPI = "relion_refine_mpi"


def fmt_num(x: float) -> str:
    """A number as relion_refine's arguments read it (``30``, not ``30.0``)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def hook_executable() -> str:
    """Absolute path of ``credgui-reconstruct``: beside ``sys.executable`` (the venv's bin/),
    else on PATH. LaunchError when neither exists."""
    beside = Path(sys.executable).parent / HOOK_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(Path(os.path.abspath(beside)))
    found = shutil.which(HOOK_NAME)
    if found:
        return os.path.abspath(found)
    raise LaunchError(
        f"{HOOK_NAME} not found beside {sys.executable} nor on PATH: install credgui (bash install.sh)"
    )


def relion_command(params: RefineParams) -> list[str]:
    """relion_refine_mpi and its arguments, without a launcher (what a queue template's
    XXXcommandXXX receives). Paths are relative to the project directory when inside it."""
    p = params
    proj = project_dir_of(p.job_dir)
    job = job_rel(p.job_dir)
    fmt = fmt_num
    cmd = [
        RELION_REFINE_MPI,
        "--o", f"{job}/run",
        "--auto_refine", "--split_random_halves",
        "--i", rel_path(p.particles_star, proj),
        "--ref", rel_path(p.initial_model, proj),
    ]
    if not p.absolute_greyscale:
        cmd.append("--firstiter_cc")
    cmd += ["--ini_high", fmt(p.ini_high), "--dont_combine_weights_via_disc", "--pool", str(p.pool),
            "--pad", str(p.pad)]
    if p.ctf:
        cmd.append("--ctf")
    cmd += ["--particle_diameter", fmt(p.particle_diameter)]
    if p.flatten_solvent:
        cmd.append("--flatten_solvent")
    if p.zero_mask:
        cmd.append("--zero_mask")
    if p.solvent_mask is not None:
        cmd += ["--solvent_mask", rel_path(p.solvent_mask, proj)]
    cmd += [
        "--oversampling", str(p.oversampling),
        "--healpix_order", str(p.healpix_order),
        "--auto_local_healpix_order", str(p.auto_local_healpix_order),
        "--offset_range", fmt(p.offset_range),
        "--offset_step", fmt(p.offset_step),
        "--sym", p.symmetry,
        "--low_resol_join_halves", fmt(p.low_resol_join_halves),
        "--norm", "--scale",
        "--j", str(p.threads),
    ]
    if p.auto_iter_max is not None:
        cmd += ["--auto_iter_max", str(p.auto_iter_max)]
    if p.external_reconstruct:
        cmd.append("--external_reconstruct")
    cmd += ["--pipeline_control", f"{job}/"]
    cmd += list(p.extra_args)
    return cmd



def hook_env(job_dir: Path, hook: str | None) -> dict[str, str]:
    """Environment variables RELION's ranks need: the hook command (a shell word list: RELION runs
    it through /bin/sh) and the job's config file."""
    command = hook if hook is not None else shlex.quote(hook_executable())
    env = {HOOK_ENV: command}
    if (job_dir / CONFIG_NAME).exists():  # a job adopted from elsewhere may have none: defaults
        env[CONFIG_ENV] = str(job_dir / CONFIG_NAME)
    return env


_SAMPLING = {0: "30 degrees", 1: "15 degrees", 2: "7.5 degrees", 3: "3.7 degrees", 4: "1.8 degrees",
             5: "0.9 degrees", 6: "0.5 degrees", 7: "0.2 degrees", 8: "0.1 degrees"}


def relion_job_options(params: RefineParams) -> dict[str, str]:
    """RELION's Refine3D job options (job.star) describing ``params``, so that RELION's GUI
    shows the job's inputs and settings; ``other_args`` holds ``--external_reconstruct`` and
    the extra arguments."""
    p = params
    proj = project_dir_of(p.job_dir)
    yes = lambda b: "Yes" if b else "No"  # noqa: E731
    other = (["--external_reconstruct"] if p.external_reconstruct else []) + list(p.extra_args)
    opts = {
        "fn_img": rel_path(p.particles_star, proj),
        "fn_ref": rel_path(p.initial_model, proj),
        "fn_mask": rel_path(p.solvent_mask, proj) if p.solvent_mask is not None else "",
        "ref_correct_greyscale": yes(p.absolute_greyscale),
        "ini_high": fmt_num(p.ini_high),
        "sym_name": p.symmetry,
        "do_ctf_correction": yes(p.ctf),
        "particle_diameter": fmt_num(p.particle_diameter),
        "do_zero_mask": yes(p.zero_mask),
        "sampling": _SAMPLING.get(p.healpix_order, "7.5 degrees"),
        "auto_local_sampling": _SAMPLING.get(p.auto_local_healpix_order, "1.8 degrees"),
        "offset_range": fmt_num(p.offset_range),
        "offset_step": fmt_num(p.offset_step),
        "do_pad1": yes(p.pad == 1),
        "nr_pool": str(p.pool),
        "nr_mpi": str(p.mpi_procs),
        "nr_threads": str(p.threads),
        "other_args": shlex.join(other),
    }
    return {k: v for k, v in opts.items() if v != "" or k == "fn_mask"}


def register_job(params: RefineParams, command: Sequence[str], env_extra: dict[str, str]) -> dict[str, Any] | None:
    """Put the job into its RELION project's pipeline (credgui.relion.pipeline) when the job
    directory is ``PROJECT/Refine3D/jobNNN`` and relion_pipeliner is installed."""
    from credgui.relion import pipeline

    job = params.job_dir
    if not (re.fullmatch(r"job\d+", job.name) and job.parent.name == "Refine3D"):
        return None
    info = pipeline.register_job(job, relion_job_options(params), list(command))
    if info is not None:
        env_extra["CREDGUI_PIPELINER"] = info["pipeliner"]
    return info

