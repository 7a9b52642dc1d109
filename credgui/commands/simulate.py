"""Simulate a cryo-EM data set (RELION 3.1 particles + ground truth) from an atomic model.

The model (PDB, mmCIF or PDBQT, optionally .gz) becomes a potential map (gemmi), centred in the
box; projections at uniformly random orientations get a CTF (300 kV, Cs 2.7 mm, Q 0.1, defocus
uniform in --defocus), optional origin offsets and white Gaussian noise of variance 1 at the target
SNR (mean per-pixel variance of the noiseless projections / noise variance, as Kimanius et al. 2021).

DIR receives particles.star (no pose columns), particles.mrcs, true_poses.star, ground_truth.mrc,
initial_model.mrc (30 A low-pass), mask.mrc and manifest.json. Run RELION from inside DIR: the
image names are relative (000001@particles.mrcs).

With several models (or a folder of them) or several --snr values, each combination goes to
DIR/<model-stem>_snr<S>/ (seed + k for the k-th), --jobs of them in parallel: a training set.

examples:
  credgui simulate resources/structures/DRD2_6CM4_target.pdbqt -o demo
  credgui simulate model.cif -o run1 --box 96 --pixel-size 1.5 --particles 10000 --snr 0.004
  credgui simulate models/ -o training --snr 0.002 0.003 0.004 --jobs 2
  credgui simulate model.pdb -o tilted --defocus 0.5 2.5 --astigmatism 0.1 --max-offset 2 --seed 7
"""

from __future__ import annotations

import argparse
import sys
import time

from credgui.simulate.dataset import (
    DEFAULT_BOX,
    DEFAULT_DEFOCUS_UM,
    DEFAULT_PARTICLES,
    DEFAULT_PIXEL_SIZE,
    DEFAULT_SNR,
)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help="atomic model file(s) (.pdb .cif .pdbqt, .gz) or folder(s) of them")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--box", type=int, default=DEFAULT_BOX, metavar="N",
                        help=f"box size in pixels, even (default {DEFAULT_BOX})")
    parser.add_argument("--pixel-size", type=float, default=DEFAULT_PIXEL_SIZE, metavar="A",
                        help=f"pixel size in A (default {DEFAULT_PIXEL_SIZE})")
    parser.add_argument("--particles", type=int, default=DEFAULT_PARTICLES, metavar="N",
                        help=f"number of particle images (default {DEFAULT_PARTICLES})")
    parser.add_argument("--snr", type=float, nargs="+", default=[DEFAULT_SNR], metavar="S",
                        help=f"target SNR, one or more (default {DEFAULT_SNR})")
    parser.add_argument("--defocus", type=float, nargs=2, default=list(DEFAULT_DEFOCUS_UM),
                        metavar=("MIN", "MAX"),
                        help="defocus range in micrometres, uniform (default %(default)s)")
    parser.add_argument("--astigmatism", type=float, default=0.0, metavar="UM",
                        help="defocus U - V in micrometres, random angle (default 0)")
    parser.add_argument("--max-offset", type=float, default=0.0, metavar="PX",
                        help="random origin offsets, uniform in +-PX pixels per axis (default 0)")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="data sets simulated in parallel (several models/SNRs; default 1)")
    parser.add_argument("--force", action="store_true", help="replace existing non-empty output directories")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    from credgui.errors import InputError
    from credgui.progress import ProgressBar
    from credgui.simulate.dataset import (
        check_out_dir,
        iter_simulate_batch,
        iter_simulate_dataset,
        plan_batch,
        validate_parameters,
    )

    if args.jobs < 1:
        raise InputError(None, f"--jobs {args.jobs}: must be at least 1")
    jobs = plan_batch(args.model, args.out, args.snr, args.seed)
    common = dict(
        box=args.box,
        pixel_size=args.pixel_size,
        n_particles=args.particles,
        defocus_um=tuple(args.defocus),
        astigmatism_um=args.astigmatism,
        max_offset_px=args.max_offset,
        force=args.force,
    )
    # all parameter and directory errors before anything is written
    for job in jobs:
        validate_parameters(job.model, snr=job.snr, **{k: v for k, v in common.items() if k != "force"})
        check_out_dir(job.out_dir, args.force)

    t0 = time.perf_counter()
    if len(jobs) == 1:
        job = jobs[0]
        bar = ProgressBar(args.quiet)
        gen = iter_simulate_dataset(job.model, job.out_dir, snr=job.snr, seed=job.seed, **common)
        try:
            while True:
                bar(next(gen))
        except StopIteration as stop:
            m = stop.value
        if not args.quiet:
            print(
                f"{m.directory}: {m.n_particles} particles, box {m.box} at {m.pixel_size:g} A/px, "
                f"SNR {m.snr_measured:.4g} (target {m.snr_target:g}), {m.mass_kda:.1f} kDa; "
                f"RELION --particle_diameter {m.particle_diameter_angst:g} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
        return 0

    failed = 0
    for p in iter_simulate_batch(jobs, n_jobs=args.jobs, **common):
        k, (job, m, err) = p.done, p.result
        if err is not None:
            failed += 1
            print(f"[{k}/{len(jobs)}] skipped: {err}", file=sys.stderr)
        elif not args.quiet:
            print(f"[{k}/{len(jobs)}] {job.out_dir} (SNR {m.snr_measured:.4g}, {m.seconds:.1f} s)", file=sys.stderr)
    if failed:
        raise InputError(args.out, f"{failed} of {len(jobs)} data sets failed (see above)")
    return 0
