"""What a refinement is asked to do (``RefineParams``) and the checks at the door before
anything starts (``validate_params``, ``prepare_job_dir``)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credgui.config import CONFIG_NAME, HookConfig, config_to_dict, write_config
from credgui.errors import InputError
from credgui.jobs.jobfile import JOB_FILE, job_rel, project_dir_of
from credgui.jobs.workers import relion_gpu_devices, worker_socket_for
from credgui.relion.star_readers import first_image_stack, read_optics
from credgui.resources import portable_resource

__all__ = ["RefineParams", "job_workers", "prepare_job_dir", "refuse_blush", "validate_params"]


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


    def record_fields(self) -> dict[str, Any]:
        """The fields of the job record (``credgui_job.json``) that come from these parameters."""
        return {
            "params": self.to_dict(),
            "ground_truth": str(self.ground_truth.absolute()) if self.ground_truth else None,
            "mask": str(self.mask.absolute()) if self.mask else None,
        }


def refuse_blush(source: str | Path | None, args: Sequence[str]) -> None:
    """InputError if ``args`` hold RELION 5's ``--blush``: with it relion_refine runs Blush's
    reconstruction and never calls the external-reconstruct hook (ml_optimiser.cpp, 5.0), so
    CW-RED would be replaced without a word."""
    if "--blush" in args:
        raise InputError(source, "--blush (RELION 5) replaces the --external_reconstruct hook, so CW-RED "
                                 "would never run: drop --blush, or run without credgui's M-step")



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
    rel = job_rel(p.job_dir)
    if any(c.isspace() for c in rel) or any(c.isspace() for c in str(proj)):
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


def prepare_job_dir(params: RefineParams) -> None:
    """Make the job directory and write its credgui.toml; refuse one that holds a refinement."""
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

