"""Run a RELION 3.1 3D auto-refinement with credgui's learned-prior M-step (CW-RED).

Starts relion_refine_mpi with --external_reconstruct and credgui-reconstruct as the hook, in
the RELION project directory (two levels above the job directory), locally under mpirun or
through a queue template (RELION's XXX...XXX variables; RELION_QSUB_TEMPLATE,
RELION_QSUB_COMMAND, RELION_QUEUE_NAME and RELION_QSUB_EXTRAn(_DEFAULT) are honoured). The exact
command is printed first. --o names the job directory (Refine3D/job012) or a job-type directory
(Refine3D/), in which the next free jobNNN is made. The hook's settings go to JOB/credgui.toml
(edit it while RELION runs: it is re-read at every M-step).

examples:
  credgui refine --i particles.star --ref initial_model.mrc --o Refine3D/ --particle-diameter 120
  credgui refine --i particles.star --ref initial_model.mrc --o Refine3D/ --denoiser unet --follow
  credgui refine --i particles.star --ref ref.mrc --o Refine3D/ --queue slurm --template my_slurm.sh \\
      --queue-name gpu --extra 1=--time=1-00:00:00
  credgui refine --i particles.star --ref ref.mrc --o Refine3D/ --iter 3 --dry-run
  credgui refine --continue Refine3D/job012 --iter 20
  credgui refine --stop Refine3D/job012
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from credgui.config import HookConfig
from credgui.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--i", dest="particles", metavar="STAR", help="particles STAR file (RELION 3.1)")
    io.add_argument("--ref", metavar="MRC", help="initial reference map (same box and pixel size)")
    io.add_argument("--o", dest="out", default="Refine3D/", metavar="DIR",
                    help="job directory or job-type directory (default Refine3D/ in the current directory)")
    io.add_argument("--ground-truth", metavar="MRC", help="recorded for the GUI's FSC against the truth")
    io.add_argument("--mask", metavar="MRC", help="recorded for the GUI's masked metrics (not given to RELION)")

    rl = parser.add_argument_group("RELION auto-refine")
    rl.add_argument("--particle-diameter", "--particle_diameter", type=float, metavar="A",
                    help="circular mask diameter in A (default 80%% of the box)")
    rl.add_argument("--angpix", type=float, metavar="A", help="pixel size (default: the optics table)")
    rl.add_argument("--sym", default="C1", help="point group (C1)")
    rl.add_argument("--mpi", type=int, default=3, metavar="N", help="MPI ranks, >= 3 (3)")
    rl.add_argument("--j", dest="threads", type=int, default=1, metavar="N", help="threads per rank (1)")
    rl.add_argument("--pad", type=int, default=2, choices=(1, 2), help="padding factor (2)")
    rl.add_argument("--ini-high", "--ini_high", type=float, default=30.0, metavar="A", help="initial low-pass (30 A)")
    rl.add_argument("--healpix-order", "--healpix_order", type=int, default=2, metavar="N", help="2 = 15 deg (2)")
    rl.add_argument("--auto-local-healpix-order", "--auto_local_healpix_order", type=int, default=4, metavar="N",
                    help="order from which searches are local (4)")
    rl.add_argument("--offset-range", "--offset_range", type=float, default=5.0, metavar="PX", help="(5)")
    rl.add_argument("--offset-step", "--offset_step", type=float, default=2.0, metavar="PX", help="(2)")
    rl.add_argument("--iter", "--auto_iter_max", dest="iter", type=int, metavar="N",
                    help="stop after iteration N (default: RELION's convergence)")
    rl.add_argument("--no-flatten-solvent", action="store_true", help="leave out --flatten_solvent")
    rl.add_argument("--no-zero-mask", action="store_true", help="leave out --zero_mask")
    rl.add_argument("--absolute-greyscale", action="store_true",
                    help="the reference is on the particles' greyscale (else --firstiter_cc)")
    rl.add_argument("--solvent-mask", "--solvent_mask", metavar="MRC", help="RELION's --solvent_mask")
    rl.add_argument("--relion-args", default="", metavar="'ARGS'", help="more relion_refine arguments, quoted")

    hk = parser.add_argument_group("learned prior (credgui.toml)")
    hk.add_argument("--denoiser", default=HookConfig.denoiser,
                    help=f"denoiser plugin name (default {HookConfig.denoiser}: the shipped model; "
                         "none = RELION's own Gaussian prior)")
    hk.add_argument("--lambda-low-res", type=float, metavar="A", help="lambda is 0 at worse resolutions")
    hk.add_argument("--lambda-high-res", type=float, metavar="A", help="lambda reaches --lambda-max here")
    hk.add_argument("--lambda-max", type=float, default=1.0, help="(1.0)")
    hk.add_argument("--device", default="auto", help="denoiser device: auto, cpu, cuda, cuda:1 (auto)")
    hk.add_argument("--weights", metavar="FILE", help="denoiser weights (default: the plugin's)")
    hk.add_argument("--keep-inputs", action="store_true",
                    help="keep RELION's input arrays of every hook call (keep_inputs = true; ~0.8 GB per "
                         "call at box 256). By default the hook deletes them after a successful call")
    hk.add_argument("--drop-inputs", action="store_true", help=argparse.SUPPRESS)  # the default now
    hk.add_argument("--hook", metavar="CMD", help="another external-reconstruct command (default credgui-reconstruct)")

    run = parser.add_argument_group("running")
    run.add_argument("--queue", default="local", metavar="SYSTEM",
                     help="local (default), slurm, or another scheduler (submitted with $RELION_QSUB_COMMAND)")
    run.add_argument("--template", metavar="FILE", help="queue template (default $RELION_QSUB_TEMPLATE or credgui's Slurm one)")
    run.add_argument("--queue-name", metavar="NAME", help="XXXqueueXXX (default $RELION_QUEUE_NAME or openmpi)")
    run.add_argument("--qsub", metavar="CMD", help="submit command (default $RELION_QSUB_COMMAND, else sbatch)")
    run.add_argument("--extra", action="append", default=[], metavar="N=VALUE", help="XXXextraNXXX value (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the command (and write nothing)")
    run.add_argument("--follow", action="store_true", help="print progress until the job ends")
    run.add_argument("--continue", dest="continue_job", metavar="JOB_DIR",
                     help="continue a stopped job from its last complete iteration")
    run.add_argument("--stop", dest="stop_job", metavar="JOB_DIR", help="stop a running job")


def _job_dir(out: str) -> tuple[Path, bool]:
    """(job directory, is new). ``Type/jobNNN`` or an existing job dir is used as is; a
    job-type directory gets the next ``jobNNN``."""
    path = Path(out)
    if any(c.isspace() for c in str(path)):
        raise InputError(out, "RELION cannot use a job directory whose path holds a space: "
                              "use e.g. Refine3D/ (the next jobNNN) or Refine3D/job012")
    from credgui.relion.layout import JOB_FILE

    if re.fullmatch(r"job\d+", path.name) or (path / JOB_FILE).exists():
        return path, False
    if not re.fullmatch(r"[A-Za-z0-9_]+", path.name):
        raise InputError(out, f"--o names a job-type directory (like Refine3D/, which gets the next "
                              f"jobNNN) or a job directory (Refine3D/job012); {path.name!r} is neither")
    return path, True


def _extra(values: list[str]) -> dict[int, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.isdigit():
            raise InputError(None, f"--extra wants N=VALUE (e.g. 1=--time=2:00:00), got {item!r}")
        out[int(key)] = value
    return out


def _params(args: argparse.Namespace, job_dir: Path):
    from credgui.jobs.launch import RefineParams
    from credgui.relion.jobdir import read_optics

    if not args.particles or not args.ref:
        raise InputError(None, "--i PARTICLES.star and --ref MAP.mrc are needed (or --continue JOB_DIR)")
    diameter = args.particle_diameter
    if diameter is None:
        pixel, box = read_optics(args.particles)
        diameter = round(0.8 * box * (args.angpix or pixel))
        print(f"credgui refine: --particle-diameter not given, using {diameter} A (80% of the box)", file=sys.stderr)
    hook_config = HookConfig(
        denoiser=args.denoiser,
        lambda_low_res=args.lambda_low_res,
        lambda_high_res=args.lambda_high_res,
        lambda_max=args.lambda_max,
        device=args.device,
        weights=args.weights,
        keep_inputs=bool(args.keep_inputs),
    )
    opt = lambda v: Path(v) if v else None  # noqa: E731
    return RefineParams(
        particles_star=Path(args.particles),
        initial_model=Path(args.ref),
        job_dir=job_dir,
        particle_diameter=diameter,
        pixel_size=args.angpix,
        symmetry=args.sym,
        mpi_procs=args.mpi,
        threads=args.threads,
        pad=args.pad,
        ini_high=args.ini_high,
        healpix_order=args.healpix_order,
        auto_local_healpix_order=args.auto_local_healpix_order,
        offset_range=args.offset_range,
        offset_step=args.offset_step,
        auto_iter_max=args.iter,
        flatten_solvent=not args.no_flatten_solvent,
        zero_mask=not args.no_zero_mask,
        absolute_greyscale=args.absolute_greyscale,
        solvent_mask=opt(args.solvent_mask),
        ground_truth=opt(args.ground_truth),
        mask=opt(args.mask),
        hook_config=hook_config,
        extra_args=_split_relion_args(args.relion_args),
    )


def _split_relion_args(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise InputError(None, f"--relion-args {text!r}: {str(exc).lower()} (quote it as one shell word, "
                               "e.g. --relion-args '--maxsig 500')") from None


def _follow(job_dir: Path) -> int:
    from credgui.commands.status import header_line, print_state
    from credgui.jobs.watch import watch_job

    done: set = set()
    last = None
    state = None
    for state in watch_job(job_dir, poll_s=2.0):
        if (state.status, state.queue_state) != last:
            print(header_line(state), flush=True)
            last = (state.status, state.queue_state)
        print_state(state, done, show_error=False)
        sys.stdout.flush()
    if state is not None and state.error:
        print(f"error: {state.error}")
    return 0 if state is not None and state.status == "finished" else 1


def main(args: argparse.Namespace) -> int:
    from credgui.jobs import control, launch

    try:
        if args.stop_job:
            state = control.stop_job(args.stop_job)
            print(f"{state.job_dir}: {state.status}")
            return 0
        if args.continue_job:
            job = Path(args.continue_job)
            cmd, mpi, _ = control.continue_command(job, auto_iter_max=args.iter)
            print(shlex.join(launch.mpirun_prefix(mpi) + cmd))
            if args.dry_run:
                return 0
            backend = None if args.queue == "local" and not args.template else "queue"
            handle = control.continue_job(
                job, auto_iter_max=args.iter, hook=args.hook, backend=backend,
                template=args.template, queue=args.queue_name, extra=_extra(args.extra),
                submit_command=args.qsub,
            )
            print(f"continued {handle.job_dir} ({handle.backend} {handle.job_id})")
            return _follow(handle.job_dir) if args.follow else 0

        out, is_type_dir = _job_dir(args.out)
        if args.dry_run:
            job = launch.next_job_dir(out.parent, out.name, create=False) if is_type_dir else out
            params = _params(args, job)
            if args.queue == "local":
                print(shlex.join(launch.local_command(params)))
            else:
                print(shlex.join(launch.relion_command(params)))
            return 0
        job = launch.next_job_dir(out.parent, out.name) if is_type_dir else out
        params = _params(args, job)
        try:
            if args.queue == "local":
                print(shlex.join(launch.local_command(params)), flush=True)
                handle = launch.launch_local(params, hook=args.hook)
            else:
                qsub = args.qsub or ("sbatch" if args.queue == "slurm" else None)
                print(shlex.join(launch.relion_command(params)), flush=True)
                handle = launch.submit_queue(
                    params, args.template, args.queue_name, _extra(args.extra),
                    hook=args.hook, submit_command=qsub,
                )
        except BaseException:
            if is_type_dir and job.is_dir() and not any(job.iterdir()):
                job.rmdir()  # do not leave an empty jobNNN behind
            raise
        print(f"started {handle.job_dir} ({handle.backend} {handle.job_id})", flush=True)
        return _follow(handle.job_dir) if args.follow else 0
    except launch.LaunchError as exc:
        print(f"credgui refine: {exc}", file=sys.stderr)
        return 1
