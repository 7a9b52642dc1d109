"""Start RELION 3.1 3D auto-refinements whose M-step is credgui's hook (CW-RED).

A job is a RELION job directory (``Refine3D/jobNNN/`` in a RELION project). RELION runs with the
project directory as its working directory, as RELION's own GUI does, so every path inside its
STAR files (``--o Refine3D/job001/run``, the image stacks named by ``_rlnImageName``) is
relative to the project directory.

Files credgui adds to the job directory:
- ``credgui.toml``: the hook's settings (``credgui.config.write_config``).
- ``credgui_job.json``: how the job was started (parameters, exact command, backend, pid/session or
  queue job id, start time, ground truth / mask for the GUI's metrics, log offsets).
- ``credgui_exit_status``: the launcher's exit code (local runs, and queue scripts in sh/bash).
- ``credgui_stopped``: written by ``stop_job`` before it kills the job.
- ``run.out`` / ``run.err``: RELION's stdout/stderr (appended, as RELION's GUI does).
- ``run_submit.script``: the queue script (queue submission).
RELION itself is run with ``--pipeline_control JOB/`` so it touches ``RELION_JOB_EXIT_SUCCESS``
or ``RELION_JOB_EXIT_FAILURE`` in the job directory when it exits.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credgui.config import CONFIG_ENV, CONFIG_NAME, HookConfig, config_to_dict, write_config
from credgui.errors import InputError
from credgui.jobs import _proc
from credgui.relion.jobdir import (
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    HOOK_LOG,
    first_image_stack,
    read_optics,
)
from credgui.resources import portable_resource, resource_path

__all__ = [
    "LaunchError",
    "RefineParams",
    "JobHandle",
    "JOB_FILE",
    "EXIT_FILE",
    "STOP_FILE",
    "HOOK_ENV",
    "project_dir_of",
    "next_job_dir",
    "hook_executable",
    "relion_command",
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

JOB_FILE = "credgui_job.json"
EXIT_FILE = "credgui_exit_status"
STOP_FILE = "credgui_stopped"
SUBMIT_SCRIPT = "run_submit.script"
HOOK_ENV = "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE"
HOOK_NAME = "credgui-reconstruct"
RELION_REFINE_MPI = "relion_refine_mpi"


class LaunchError(RuntimeError):
    """A job could not be started, stopped or continued (one-line message: what and why)."""


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RefineParams:
    """A RELION 3.1 3D auto-refinement with credgui's M-step (``--external_reconstruct``).

    Paths may be relative to the current directory. ``job_dir``: the RELION job directory
    (e.g. ``project/Refine3D/job001``); RELION runs in its project directory (two levels up for
    ``Type/jobNNN``, else its parent). ``pixel_size`` (A): None = the particles' optics table.
    ``particle_diameter`` (A): RELION's circular mask. Sampling arguments are relion_refine's
    own (``healpix_order`` 2 = 15 deg before oversampling; ``offset_range``/``offset_step`` in
    pixels). ``auto_iter_max``: stop after this iteration (None = RELION's convergence).
    ``absolute_greyscale``: False adds ``--firstiter_cc`` (RELION GUI default "No").
    ``solvent_mask``: RELION's ``--solvent_mask``. ``ground_truth`` / ``mask``: recorded for the
    GUI's metrics only (FSC against the truth inside the mask); RELION does not see them.
    ``extra_args``: appended verbatim to relion_refine's arguments.
    """

    particles_star: Path
    initial_model: Path
    job_dir: Path
    particle_diameter: float
    pixel_size: float | None = None
    symmetry: str = "C1"
    mpi_procs: int = 3
    threads: int = 1
    pad: int = 2
    ini_high: float = 30.0
    healpix_order: int = 2
    auto_local_healpix_order: int = 4
    offset_range: float = 5.0
    offset_step: float = 2.0
    oversampling: int = 1
    auto_iter_max: int | None = None
    flatten_solvent: bool = True
    zero_mask: bool = True
    ctf: bool = True
    absolute_greyscale: bool = False
    low_resol_join_halves: float = 40.0
    pool: int = 3
    solvent_mask: Path | None = None
    ground_truth: Path | None = None
    mask: Path | None = None
    hook_config: HookConfig = field(default_factory=HookConfig)
    extra_args: tuple[str, ...] = ()
    external_reconstruct: bool = True
    """False: plain RELION (no ``--external_reconstruct``; the hook is never run), for
    benchmarks comparing credgui's M-step with RELION's own."""
    warm_worker: bool = True
    """With a denoiser: a warm ``credgui worker`` comes and goes with the job (the job's launcher
    or queue script starts it before RELION and stops it when RELION exits; stopping the job
    stops it), so torch and the model load once per job, not once per hook call. One worker
    per device of RELION's ``--gpu`` (in ``extra_args``): half 1 on the first, half 2 on the
    second; with one device both halves queue onto it (never two models on one GPU)."""

    def __post_init__(self) -> None:
        for name in ("particles_star", "initial_model", "job_dir", "solvent_mask", "ground_truth", "mask"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not isinstance(self.extra_args, tuple):
            object.__setattr__(self, "extra_args", tuple(self.extra_args))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as absolute strings, hook_config as its TOML dict)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = os.path.abspath(value)
            elif isinstance(value, HookConfig):
                value = config_to_dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RefineParams":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if isinstance(kwargs.get("hook_config"), Mapping):
            kwargs["hook_config"] = HookConfig(**kwargs["hook_config"])
        if "extra_args" in kwargs:
            kwargs["extra_args"] = tuple(kwargs["extra_args"])
        return cls(**kwargs)


def project_dir_of(job_dir: str | Path) -> Path:
    """RELION's working directory for a job: ``P`` for ``P/Type/jobNNN``, else the parent."""
    job = Path(os.path.abspath(job_dir))
    if re.fullmatch(r"job\d+", job.name):
        return job.parent.parent
    return job.parent


def _rel(path: str | Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it (as RELION's GUI writes paths), else absolute."""
    p = os.path.abspath(path)
    b = os.path.abspath(base)
    if p == b or p.startswith(b.rstrip(os.sep) + os.sep):
        return os.path.relpath(p, b)
    return p


def _job_rel(job_dir: Path) -> str:
    """The job directory relative to its project directory, e.g. ``Refine3D/job001``."""
    return _rel(job_dir, project_dir_of(job_dir))


def next_job_dir(project_dir: str | Path, job_type: str = "Refine3D", *, create: bool = True) -> Path:
    """The next RELION-style job directory ``PROJECT/JOB_TYPE/jobNNN`` (absolute).

    Job numbers are project-wide as in RELION: one more than the highest ``jobNNN`` under any
    job-type directory and than ``_rlnPipeLineJobCounter - 1`` of ``default_pipeline.star``.
    With ``create`` the directory is made (atomically: two callers never get the same one).
    """
    proj = Path(os.path.abspath(project_dir))
    if not re.fullmatch(r"[A-Za-z0-9_]+", job_type):
        raise ValueError(f"job type must be a plain name like Refine3D, got {job_type!r}")
    highest = 0
    try:
        types = [d for d in proj.iterdir() if d.is_dir()]
    except FileNotFoundError:
        types = []
    for tdir in types:
        try:
            for j in tdir.iterdir():
                m = re.fullmatch(r"job(\d+)", j.name)
                if m:
                    highest = max(highest, int(m[1]))
        except OSError:
            continue
    pipeline = proj / "default_pipeline.star"
    if pipeline.is_file():
        m = re.search(r"_rlnPipeLineJobCounter\s+(\d+)", pipeline.read_text(errors="replace"))
        if m:
            highest = max(highest, int(m[1]) - 1)
    number = highest + 1
    while True:
        job = proj / job_type / (f"job{number:03d}" if number < 1000 else f"job{number}")
        if not create:
            return job
        job.parent.mkdir(parents=True, exist_ok=True)
        try:
            job.mkdir()
            return job
        except FileExistsError:
            number += 1


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
    job = _job_rel(p.job_dir)
    fmt = _fmt_num
    cmd = [
        RELION_REFINE_MPI,
        "--o", f"{job}/run",
        "--auto_refine", "--split_random_halves",
        "--i", _rel(p.particles_star, proj),
        "--ref", _rel(p.initial_model, proj),
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
        cmd += ["--solvent_mask", _rel(p.solvent_mask, proj)]
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


def refuse_blush(source: str | Path | None, args: Sequence[str]) -> None:
    """InputError if ``args`` hold RELION 5's ``--blush``: with it relion_refine runs Blush's
    reconstruction and never calls the external-reconstruct hook (ml_optimiser.cpp, 5.0), so
    CW-RED would be replaced without a word."""
    if "--blush" in args:
        raise InputError(source, "--blush (RELION 5) replaces the --external_reconstruct hook, so CW-RED "
                                 "would never run: drop --blush, or run without credgui's M-step")


WORKER_SOCKET = "credgui_worker.sock"


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
    import hashlib

    path = str(Path(os.path.abspath(job_dir)) / WORKER_SOCKET)
    if len(os.fsencode(path)) > 94:
        digest = hashlib.sha1(path.encode()).hexdigest()[:16]
        path = f"/tmp/credgui-{os.getuid()}/{digest}.sock"
    return path if half == 1 else path[: -len(".sock")] + "_half2.sock"  # the hook's rule


def job_workers(params: RefineParams) -> list[tuple[str, str]]:
    """[(socket, device)] of the warm workers the job runs with (empty: none)."""
    p = params
    cfg = p.hook_config
    if not (p.external_reconstruct and p.warm_worker and cfg.denoiser != "none"):
        return []
    devices = relion_gpu_devices(p.extra_args) or [cfg.device or "auto"]
    first = cfg.worker_socket or worker_socket_for(p.job_dir)
    workers = [(first, devices[0])]
    if len(devices) > 1 and devices[1] != devices[0]:
        workers.append((worker_socket_for(p.job_dir, half=2), devices[1]))
    return workers


def _worker_env(workers: Sequence[Sequence[str]]) -> dict[str, str]:
    if not workers:
        return {}
    return {"CREDGUI_WORKERS": " ".join(f"{s}|{d}" for s, d in workers),
            "CREDGUI_WORKER_CMD": shlex.join([sys.executable, "-m", "credgui.cli", "worker"])}


# sh: start the job's warm workers (in the job's session: stopping the job stops them), and
# give each up to 60 s to listen, so that RELION's first M-step already finds it ...
_WORKERS_START = ('for w in $CREDGUI_WORKERS; do s="${w%%|*}"; mkdir -p "$(dirname "$s")"; '
                  '$CREDGUI_WORKER_CMD --socket "$s" --device "${w#*|}" --idle-timeout 172800 '
                  '>>"$s.log" 2>&1 & done; '
                  'for w in $CREDGUI_WORKERS; do n=0; while [ ! -S "${w%%|*}" ] && [ $n -lt 600 ]; do '
                  'sleep 0.1; n=$((n+1)); done; done')
# ... and stop them when RELION has exited
_WORKERS_STOP = 'for w in $CREDGUI_WORKERS; do $CREDGUI_WORKER_CMD --socket "${w%%|*}" --stop >/dev/null 2>&1; done'


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@functools.lru_cache(maxsize=8)
def _is_open_mpi(launcher: str) -> bool:
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
    if Path(launcher[0]).name in ("mpirun", "mpiexec", "orterun") and _is_open_mpi(launcher[0]):
        cmd.append("--oversubscribe")
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    return cmd + ["-n", str(n)]


def local_command(params: RefineParams) -> list[str]:
    """The full local command: the MPI launcher, then ``relion_command(params)``."""
    return mpirun_prefix(params.mpi_procs) + relion_command(params)


# --------------------------------------------------------------------------------------------
# validation at the door
# --------------------------------------------------------------------------------------------


def validate_params(params: RefineParams) -> RefineParams:
    """Check inputs before anything starts; returns params with ``pixel_size`` filled in and
    ``hook_config.pixel_size`` set. Raises InputError naming the file and what to do."""
    from credgui.relion.mrc import read_voxel_size  # mrcfile: only when launching

    p = params
    if p.external_reconstruct:
        refuse_blush(p.job_dir, p.extra_args)
    proj = project_dir_of(p.job_dir)
    for name in ("particles_star", "initial_model", "solvent_mask", "ground_truth", "mask"):
        path = getattr(p, name)
        if path is not None and not path.is_file():
            raise InputError(path, f"{name.replace('_', ' ')} not found")
    optics_pixel, box = read_optics(p.particles_star)
    pixel = optics_pixel if p.pixel_size is None else float(p.pixel_size)
    if abs(pixel - optics_pixel) > 0.01 * optics_pixel:
        raise InputError(
            p.particles_star,
            f"optics pixel size is {optics_pixel} A but {pixel} A was asked for: RELION uses the "
            "optics table; leave the pixel size empty or fix the STAR file",
        )
    stack = first_image_stack(p.particles_star)
    if stack is None:
        raise InputError(p.particles_star, "no particles with _rlnImageName in data_particles")
    stack_path = Path(stack) if os.path.isabs(stack) else proj / stack
    if not stack_path.is_file():
        raise InputError(
            p.particles_star,
            f"image stack {stack!r} not found as {stack_path}: RELION reads stacks relative to the "
            f"project directory {proj}; put the job in the data's project or link the stack there",
        )
    from credgui.relion.mrc import read_mrc

    ref = read_mrc(p.initial_model, check_finite=True, mmap=True)
    if ref.ndim != 3 or ref.shape != (box, box, box):
        raise InputError(
            p.initial_model,
            f"shape {tuple(ref.shape)} but the particles are {box} px: resize it "
            f"(relion_image_handler --new_box {box})",
        )
    ref_pixel = read_voxel_size(p.initial_model)
    if ref_pixel > 0 and abs(ref_pixel - pixel) > 0.01 * pixel:
        raise InputError(
            p.initial_model,
            f"{ref_pixel:.4g} A/px but the particles are {pixel:.4g} A/px: rescale it "
            f"(relion_image_handler --rescale_angpix {pixel:.4g} --new_box {box})",
        )
    if not 0 < p.particle_diameter <= box * pixel:
        raise InputError(
            p.particles_star,
            f"particle diameter {p.particle_diameter} A must be > 0 and fit the box "
            f"({box} px x {pixel:.4g} A = {box * pixel:.4g} A)",
        )
    if p.mpi_procs < 3:
        raise InputError(None, f"RELION's auto-refine needs at least 3 MPI processes, got {p.mpi_procs}")
    if p.threads < 1 or p.pad not in (1, 2) or p.pool < 1:
        raise InputError(None, f"threads >= 1, pad 1 or 2, pool >= 1 expected (got {p.threads}, {p.pad}, {p.pool})")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", p.symmetry):
        raise InputError(None, f"symmetry must be a point group like C1, D7, O or I3, got {p.symmetry!r}")
    if p.auto_iter_max is not None and p.auto_iter_max < 1:
        raise InputError(None, f"auto_iter_max must be >= 1, got {p.auto_iter_max}")
    job_rel = _job_rel(p.job_dir)
    if any(c.isspace() for c in job_rel) or any(c.isspace() for c in str(proj)):
        raise InputError(p.job_dir, "RELION cannot run jobs whose path holds spaces")
    hook_cfg = p.hook_config
    if hook_cfg.pixel_size is None:
        hook_cfg = dataclasses.replace(hook_cfg, pixel_size=pixel)
    if hook_cfg.weights:  # shipped weights by a reference that survives moving the install
        hook_cfg = dataclasses.replace(hook_cfg, weights=portable_resource(hook_cfg.weights))
    if (p.external_reconstruct and p.warm_worker and hook_cfg.denoiser != "none"
            and hook_cfg.worker_socket is None):
        hook_cfg = dataclasses.replace(hook_cfg, worker_socket=worker_socket_for(p.job_dir))
    relion_gpu_devices(p.extra_args)  # a bad --gpu is refused here, before anything starts
    if hook_cfg.symmetry is None and p.external_reconstruct and hook_cfg.denoiser != "none":
        # the hook symmetrises f(x~) with the run's point group: one it cannot is refused here
        from credgui.recon.symmetry import normalise_group

        try:
            hook_cfg = dataclasses.replace(hook_cfg, symmetry=normalise_group(p.symmetry))
        except ValueError as exc:
            raise InputError(None, f"--sym {p.symmetry}: {exc}") from None
    hook_cfg.validate(p.job_dir / CONFIG_NAME)
    return dataclasses.replace(
        p, job_dir=Path(os.path.abspath(p.job_dir)), pixel_size=pixel, hook_config=hook_cfg
    )


def _prepare_job_dir(params: RefineParams) -> None:
    job = params.job_dir
    job.mkdir(parents=True, exist_ok=True)
    taken = [n for n in os.listdir(job) if n == JOB_FILE or n.endswith("_optimiser.star")]
    if taken:
        raise InputError(
            job / taken[0],
            "the job directory already holds a refinement: continue it (credgui refine --continue) "
            "or choose a new job directory",
        )
    write_config(job / CONFIG_NAME, params.hook_config)


# --------------------------------------------------------------------------------------------
# the job file and handles
# --------------------------------------------------------------------------------------------


def read_job_file(job_dir: str | Path) -> dict[str, Any] | None:
    """``credgui_job.json`` as a dict; None when absent. InputError when unreadable."""
    path = Path(job_dir) / JOB_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    for key, kinds, what in _JOB_FIELDS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise InputError(path, f"{key} must be {what}, got {value!r:.40}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(path, f"{key} must be finite, got {value!r}")
    for name, offset in (data.get("log_offsets") or {}).items():
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InputError(path, f"log_offsets.{name} must be a byte offset >= 0, got {offset!r:.40}")
    return data


_NUM = (int, float)
_JOB_FIELDS: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("start_time", _NUM, "a number (seconds since 1970)"),
    ("pid", int, "an integer"), ("pgid", int, "an integer"), ("sid", int, "an integer"),
    ("proc_start", int, "an integer"),
    ("backend", str, "a string"), ("host", str, "a string"), ("job_dir", str, "a string"),
    ("project_dir", str, "a string"), ("output_root", str, "a string"),
    ("job_id", (str, int), "a string"), ("queue_job_id", (str, int), "a string"),
    ("params", dict, "an object"), ("log_offsets", dict, "an object"),
    ("ground_truth", str, "a string"), ("mask", str, "a string"),
    ("pids", list, "a list"), ("mpi_procs", int, "an integer"),
)
"""Fields of credgui_job.json that readers use, checked at the door (None is allowed)."""


def _write_job_file(job_dir: Path, data: Mapping[str, Any]) -> None:
    from credgui._io import write_json_atomic

    write_json_atomic(job_dir / JOB_FILE, dict(data), sort_keys=True, allow_nan=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_offsets(job_dir: Path) -> dict[str, int]:
    return {name: _file_size(job_dir / name) for name in ("run.out", "run.err", HOOK_LOG)}


def _clear_markers(job_dir: Path) -> None:
    for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED, EXIT_FILE, STOP_FILE, "RELION_JOB_ABORT_NOW"):
        (job_dir / name).unlink(missing_ok=True)


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

    def state(self):
        """The job's current ``credgui.jobs.watch.JobState``."""
        from credgui.jobs.watch import scan_job

        self.poll()
        return scan_job(self.job_dir)

    def poll(self) -> int | None:
        """Reap the local launcher if it ended (so it leaves no zombie); its exit code or None."""
        return self.process.poll() if self.process is not None else None

    def wait(self, timeout: float | None = None, poll_s: float = 1.0):
        """Block until the job has ended (status not "running"); returns the final JobState.
        TimeoutError after ``timeout`` seconds."""
        from credgui.jobs.watch import scan_job

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            state = scan_job(self.job_dir)
            if state.status not in ("running",):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.job_dir}: still running after {timeout} s")
            time.sleep(poll_s)

    def stop(self, timeout: float = 15.0):
        from credgui.jobs.control import stop_job

        state = stop_job(self.job_dir, timeout=timeout)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return state


def _hook_env(job_dir: Path, hook: str | None) -> dict[str, str]:
    """Environment variables RELION's ranks need: the hook command (a shell word list: RELION runs
    it through /bin/sh) and the job's config file."""
    command = hook if hook is not None else shlex.quote(hook_executable())
    env = {HOOK_ENV: command}
    if (job_dir / CONFIG_NAME).exists():  # a job adopted from elsewhere may have none: defaults
        env[CONFIG_ENV] = str(job_dir / CONFIG_NAME)
    return env


_WRAPPER = (_WORKERS_START + '; "$@"; rc=$?; ' + _WORKERS_STOP + '; '
            'printf "%s\\n" "$rc" > "$CREDGUI_EXIT_FILE.tmp" && mv -f "$CREDGUI_EXIT_FILE.tmp" "$CREDGUI_EXIT_FILE"; '
            # a job in RELION's pipeline: let RELION record its end (status, output nodes)
            'if [ -n "$CREDGUI_PIPELINER" ]; then $CREDGUI_PIPELINER --check_job_completion >/dev/null 2>&1; fi; '
            'exit "$rc"')


def _start_local(job_dir: Path, command: list[str], env_extra: Mapping[str, str]) -> subprocess.Popen:
    proj = project_dir_of(job_dir)
    env = dict(os.environ)
    for key in ("CREDGUI_PIPELINER", "CREDGUI_WORKERS"):  # only this job's own
        env.pop(key, None)
    env.update(env_extra)
    env["CREDGUI_EXIT_FILE"] = str(job_dir / EXIT_FILE)
    with open(job_dir / "run.out", "ab") as out, open(job_dir / "run.err", "ab") as err:
        return subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, "credgui-refine", *command],
            cwd=proj,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: stop_job kills all of it
        )


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
        "fn_img": _rel(p.particles_star, proj),
        "fn_ref": _rel(p.initial_model, proj),
        "fn_mask": _rel(p.solvent_mask, proj) if p.solvent_mask is not None else "",
        "ref_correct_greyscale": yes(p.absolute_greyscale),
        "ini_high": _fmt_num(p.ini_high),
        "sym_name": p.symmetry,
        "do_ctf_correction": yes(p.ctf),
        "particle_diameter": _fmt_num(p.particle_diameter),
        "do_zero_mask": yes(p.zero_mask),
        "sampling": _SAMPLING.get(p.healpix_order, "7.5 degrees"),
        "auto_local_sampling": _SAMPLING.get(p.auto_local_healpix_order, "1.8 degrees"),
        "offset_range": _fmt_num(p.offset_range),
        "offset_step": _fmt_num(p.offset_step),
        "do_pad1": yes(p.pad == 1),
        "nr_pool": str(p.pool),
        "nr_mpi": str(p.mpi_procs),
        "nr_threads": str(p.threads),
        "other_args": shlex.join(other),
    }
    return {k: v for k, v in opts.items() if v != "" or k == "fn_mask"}


def _register(params: RefineParams, command: Sequence[str], env_extra: dict[str, str]) -> dict[str, Any] | None:
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


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _base_record(params: RefineParams | None, job_dir: Path, backend: str, hook_env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "format": 1,
        "backend": backend,
        "job_dir": str(job_dir),
        "project_dir": str(project_dir_of(job_dir)),
        "output_root": f"{_job_rel(job_dir)}/run",
        "params": params.to_dict() if params is not None else None,
        "ground_truth": str(params.ground_truth.absolute()) if params and params.ground_truth else None,
        "mask": str(params.mask.absolute()) if params and params.mask else None,
        "hook": hook_env.get(HOOK_ENV),
        "host": socket.gethostname(),
        "start_time": time.time(),
        "start_iso": _now_iso(),
        "log_offsets": _log_offsets(job_dir),
        "pid": None,
        "pgid": None,
        "sid": None,
        "proc_start": None,
        "job_id": None,
    }


def launch_local(params: RefineParams, *, hook: str | None = None) -> JobHandle:
    """Validate, prepare the job directory and start RELION locally under mpirun, in its own
    process group, with stdout/stderr appended to ``JOB/run.out`` / ``JOB/run.err``.

    ``hook``: the external-reconstruct command (a shell command line); default the absolute
    path of ``credgui-reconstruct``. Returns at once; follow with ``JobHandle.wait`` or
    ``credgui.jobs.watch.watch_job``.
    """
    params = validate_params(params)
    _prepare_job_dir(params)
    job = params.job_dir
    env_extra = _hook_env(job, hook)
    workers = job_workers(params)
    env_extra.update(_worker_env(workers))
    command = local_command(params)
    _clear_markers(job)
    pipe = _register(params, command, env_extra)
    record = _base_record(params, job, "local", env_extra)
    record.update(command=command, relion_command=relion_command(params), pipeline=pipe,
                  workers=[list(w) for w in workers])
    proc = _start_local(job, command, env_extra)
    record.update(pid=proc.pid, pgid=proc.pid, sid=proc.pid, proc_start=_proc.proc_start_time(proc.pid), job_id=str(proc.pid))
    _write_job_file(job, record)
    return JobHandle(job, "local", str(proc.pid), tuple(command), proc.pid, proc.pid, proc)


# --------------------------------------------------------------------------------------------
# queue submission (RELION 3.1 template conventions, src/pipeline_jobs.cpp)
# --------------------------------------------------------------------------------------------


def default_template() -> Path:
    """``$RELION_QSUB_TEMPLATE`` if set, else credgui's shipped Slurm template."""
    env = os.environ.get("RELION_QSUB_TEMPLATE")
    return Path(env) if env else resource_path("templates", "slurm.sh")


def _extra_values(extra: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
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


def _is_csh(lines: list[str]) -> bool:
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
    name = _job_rel(job) + "/"
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
    for i, v in _extra_values(extra).items():
        values[f"XXXextra{i}XXX"] = v
    pattern = re.compile("|".join(re.escape(k) for k in sorted(values, key=len, reverse=True)))
    text = pattern.sub(lambda m: values[m.group(0)], text)
    text = re.sub(r"XXXextra\d+XXX", "", text)
    left = sorted(set(re.findall(r"XXX[A-Za-z0-9]+XXX", text)))
    if left:
        raise InputError(template, f"unknown template variable(s) {', '.join(left)}")

    lines = text.splitlines()
    csh = _is_csh(lines)
    env = _hook_env(job, hook)
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
                  *[f"export {k}={shlex.quote(v)}" for k, v in _worker_env(workers).items()], _WORKERS_START]
    lines[at:at] = block
    if not csh:
        if workers:
            lines += ["credgui_rc=$?", _WORKERS_STOP, "(exit $credgui_rc)"]
        exit_file = shlex.quote(str(job / EXIT_FILE))
        lines += [
            "# added by credgui: the exit code, for credgui's job status",
            "credgui_rc=$?",
            f'printf "%s\\n" "$credgui_rc" > {exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}',
            'exit "$credgui_rc"',
        ]
    script = job / SUBMIT_SCRIPT
    job.mkdir(parents=True, exist_ok=True)
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def queue_name(queue: str | None = None) -> str:
    """``queue``, else ``$RELION_QUEUE_NAME``, else RELION's default ``openmpi``."""
    return queue if queue is not None else os.environ.get("RELION_QUEUE_NAME", "openmpi")


def submit_script(job_dir: Path, script: Path, hook: str | None = None, submit_command: str | None = None) -> tuple[str | None, str, list[str]]:
    """Submit ``script`` from the project directory; (job id, backend, command)."""
    job = Path(job_dir)
    qsub = submit_command or os.environ.get("RELION_QSUB_COMMAND") or "sbatch"
    command = shlex.split(qsub) + [_rel(script, project_dir_of(job))]
    env = dict(os.environ)
    env.update(_hook_env(job, hook))
    try:
        out = subprocess.run(
            command, cwd=project_dir_of(job), env=env, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"{shlex.join(command)}: {exc}") from None
    output = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise LaunchError(f"{shlex.join(command)} failed ({out.returncode}): {' '.join(output.split())[:300]}")
    job_id = _parse_job_id(out.stdout) or _parse_job_id(output)
    backend = "slurm" if Path(command[0]).name == "sbatch" else "queue"
    return job_id, backend, command


_JOB_ID_RE = re.compile(r"Submitted batch job (\d+)|\b(\d+)\b")


def _parse_job_id(output: str) -> str | None:
    m = _JOB_ID_RE.search(output)
    if not m:
        return None
    return m.group(1) or m.group(2)


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
    _prepare_job_dir(params)
    job = params.job_dir
    _clear_markers(job)
    script = write_submit_script(params, template, queue, extra, hook=hook)
    pipe = _register(params, relion_command(params), {})
    job_id, backend, command = submit_script(job, script, hook, submit_command)
    record = _base_record(params, job, backend, _hook_env(job, hook))
    record.update(
        pipeline=pipe,
        command=command,
        relion_command=relion_command(params),
        job_id=job_id,
        submit_script=str(script),
        queue=queue_name(queue),
        workers=[list(w) for w in job_workers(params)],
    )
    _write_job_file(job, record)
    return JobHandle(job, backend, job_id, tuple(command))
