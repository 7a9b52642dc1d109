"""Make training and validation data for the U-Net denoiser.

  library   atomic models -> ground-truth map libraries, split by protein family into
            OUT/gt_train.npz and OUT/gt_val.npz (no family in both), OUT/split.json records it.
            Default models: the offline ones (docs/atomic-models.md) found on this machine.
  gaussian  a fixed set of Gaussian pairs (x~, x^) from a library at given nominal resolutions:
            coloured noise whose per-shell SNR puts the half-map FSC = 0.143 at the resolution,
            damped in the solvent; x^ = the ground truth times that FSC (eq. 18-19).
  relion    harvest finished refinement job directories: every iteration's x~
            (ROOT_credgui_unreg.mrc) with the target x^ = ground truth x that iteration's
            half-map FSC (rlnGoldStandardFsc), scale-matched. With --run MODEL..., first simulate
            data sets and run real RELION auto-refines with the hook (expensive: minutes each).

Sets are .npz (inputs, targets, resolution, ...) with a JSON index beside them, written
atomically; `credgui train --intermediates` and `credgui evaluate-denoiser --sets` read them.

Examples:
  credgui train-data library --out lib --box 64 --voxel-size 1.5
  credgui train-data gaussian --library lib/gt_val.npz --out val_gauss.npz
  credgui train-data relion Refine3D/job001 Refine3D/job002 --out relion_set.npz --voxel-size 1.5 --box 64
  credgui train-data relion --run ldh.pdb --snr 0.05 --jobs-dir runs --out relion_set.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", required=True)
    lib = sub.add_parser("library", help="ground-truth map libraries split by family")
    lib.add_argument("--out", required=True, metavar="DIR")
    lib.add_argument(
        "--models",
        nargs="+",
        metavar="FILE",
        help="atomic models (default: the offline ones); family = --family or own",
    )
    lib.add_argument(
        "--family",
        nargs="+",
        metavar="NAME",
        help="one family per --models file (default: the file's stem)",
    )
    lib.add_argument(
        "--search",
        nargs="+",
        default=[],
        metavar="DIR",
        help="extra folders to look for dockstring/ and MDAnalysisTests/ in",
    )
    lib.add_argument(
        "--validation-families",
        nargs="+",
        metavar="NAME",
        help="families held out for validation (default: ldh_mdh, "
        "nuclear_receptor_lbd, gpcr_class_a)",
    )
    lib.add_argument("--box", type=int, default=64)
    lib.add_argument("--voxel-size", type=float, default=1.5, metavar="A")
    lib.add_argument(
        "--orientations", type=int, default=3, help="random orientations per model"
    )
    lib.add_argument("--seed", type=int, default=0)

    gau = sub.add_parser(
        "gaussian", help="a fixed set of Gaussian pairs from a library"
    )
    gau.add_argument("--library", required=True, metavar="NPZ")
    gau.add_argument("--out", required=True, metavar="NPZ")
    gau.add_argument(
        "--resolutions",
        nargs="+",
        type=float,
        default=[3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0],
    )
    gau.add_argument("--per-resolution", type=int, default=12)
    gau.add_argument("--seed", type=int, default=0)

    rel = sub.add_parser("relion", help="harvest RELION intermediates (x~ with FSC)")
    rel.add_argument("jobs", nargs="*", metavar="JOB_DIR")
    rel.add_argument("--out", required=True, metavar="NPZ")
    rel.add_argument(
        "--ground-truth",
        metavar="MRC",
        help="default: the one credgui_job.json records for each job",
    )
    rel.add_argument(
        "--run",
        nargs="+",
        metavar="MODEL",
        help="first simulate + refine these models (real RELION runs)",
    )
    rel.add_argument("--snr", nargs="+", type=float, default=[0.05])
    rel.add_argument("--jobs-dir", metavar="DIR", help="where --run puts its projects")
    rel.add_argument("--particles", type=int, default=500)
    rel.add_argument("--sim-box", type=int, default=64)
    rel.add_argument("--sim-pixel-size", type=float, default=1.5)
    rel.add_argument("--iter-max", type=int, default=10)


    rec = sub.add_parser(
        "reconstruct",
        help="RELION-faithful pairs: relion_reconstruct on simulated half-sets with pose errors",
    )
    rec.add_argument("--out", required=True, metavar="DIR", help="folder of shards (one .npz per stack)")
    rec.add_argument("--stacks", type=int, required=True, help="simulated stacks (pairs_per_stack x 2 maps each)")
    rec.add_argument("--split", choices=("train", "val"), default="train",
                     help="the offline models of the training or of the held-out families")
    rec.add_argument("--models", nargs="+", metavar="FILE", help="atomic models (instead of --split)")
    rec.add_argument("--validation-families", nargs="+", metavar="NAME")
    rec.add_argument("--search", nargs="+", default=[], metavar="DIR")
    rec.add_argument("--pairs-per-stack", type=int, default=6)
    rec.add_argument("--max-box", type=int, default=112)
    rec.add_argument("--pixel-size", type=float, nargs=2, default=(1.0, 2.6), metavar=("LO", "HI"))
    rec.add_argument("--snr", type=float, nargs=2, default=(0.005, 0.3), metavar=("LO", "HI"))
    rec.add_argument("--angle-error", type=float, nargs=2, default=(0.3, 12.0), metavar=("LO", "HI"),
                     help="sigma of the pose error (deg), log-uniform")
    rec.add_argument("--outliers", type=float, nargs=2, default=(0.0, 0.35), metavar=("LO", "HI"),
                     help="fraction of particles at random orientations")
    rec.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    return {"library": _library, "gaussian": _gaussian, "relion": _relion, "reconstruct": _reconstruct}[
        args.kind
    ](args)


def _reconstruct(args: argparse.Namespace) -> int:
    """Stacks cycling through the models of the split; resumable (shards already made are kept)."""
    from credgui.denoise.catalog import DEFAULT_VALIDATION_FAMILIES, offline_models
    from credgui.denoise.reconstructed import ReconSettings, iter_reconstructed_set
    from credgui.errors import InputError
    from credgui.simulate.model import model_stem

    if args.models:
        models = [Path(m) for m in args.models]
        families = {}
    else:
        val_fams = set(args.validation_families or DEFAULT_VALIDATION_FAMILIES)
        entries = [e for e in offline_models(args.search)
                   if (e.family in val_fams) == (args.split == "val")]
        models = [Path(e.path) for e in entries]
        families = {model_stem(e.path): e.family for e in entries}
    import numpy as np

    if not models:
        raise InputError(Path(args.out), "no atomic models found for this split (see docs/atomic-models)")
    order = np.random.default_rng(args.seed).permutation(len(models))
    models = [models[i] for i in order]
    settings = ReconSettings(pairs_per_stack=args.pairs_per_stack, max_box=args.max_box,
                             pixel_size=tuple(args.pixel_size), snr=tuple(args.snr),
                             angle_error=tuple(args.angle_error), outliers=tuple(args.outliers))
    meta = {"kind": "reconstruct", "split": args.split, "families": sorted(set(families.values())),
            "models": sorted(model_stem(m) for m in models)}
    last = None
    for p in iter_reconstructed_set(models, args.out, args.stacks, args.seed, settings, meta):
        last = p
        err = f"  skipped: {p.result.last_error}" if p.result.last_error else ""
        print(f"stack {p.done}/{p.total}: {p.result.pairs} maps, {p.elapsed_s:.0f} s{err}", flush=True)
    if last is not None and last.elapsed_s > 0:
        pairs = last.result.pairs
        print(f"{pairs} maps -> {args.out} ({60 * pairs / last.elapsed_s:.1f} maps per minute)")
    return 0


def _library(args: argparse.Namespace) -> int:
    from credgui.denoise.catalog import DEFAULT_VALIDATION_FAMILIES, offline_models
    from credgui.denoise.groundtruth import ModelEntry, build_split_libraries
    from credgui.errors import InputError
    from credgui.simulate.model import model_stem

    if args.models:
        fams = args.family or [model_stem(m) for m in args.models]
        if len(fams) != len(args.models):
            raise InputError(
                args.models[0],
                f"{len(fams)} --family names for {len(args.models)} models",
            )
        entries = [
            ModelEntry(str(m), f, model_stem(m))
            for m, f in zip(args.models, fams, strict=True)
        ]
    else:
        entries = offline_models(args.search)
        if not entries:
            raise InputError(
                Path("/usr/share/doc/theseus/examples"),
                "no offline atomic models found (see docs/atomic-models.md)",
            )
    val = args.validation_families or list(DEFAULT_VALIDATION_FAMILIES)
    try:
        for p in build_split_libraries(
            entries,
            val,
            args.out,
            box=args.box,
            voxel_size=args.voxel_size,
            orientations=args.orientations,
            seed=args.seed,
        ):
            print(f"{p.stage} {p.done}/{p.total} {p.item}: {p.message}", flush=True)
    except ValueError as exc:
        print(f"credgui train-data: error: {exc}", file=sys.stderr)
        return 2
    report = json.loads((Path(args.out) / "split.json").read_text())
    for part, info in report["parts"].items():
        print(f"{part}: {info['maps']} maps, families {', '.join(info['families'])}")
    return 0


def _gaussian(args: argparse.Namespace) -> int:
    from credgui.denoise.groundtruth import load_library
    from credgui.denoise.harvest import save_intermediates
    from credgui.denoise.pairs import PairSettings, ResolutionPairs, fixed_pairs

    lib = load_library(args.library)
    lo, hi = min(args.resolutions), max(args.resolutions)
    src = ResolutionPairs(
        lib.maps, lib.voxel_size, PairSettings(res_min=lo, res_max=hi)
    )
    items = fixed_pairs(src, list(args.resolutions), args.per_resolution, args.seed)
    save_intermediates(
        args.out,
        items,
        lib.voxel_size,
        {
            "kind": "gaussian",
            "library": str(args.library),
            "families": sorted(set(lib.families)),
            "models": sorted(set(lib.names)),
            "per_resolution": args.per_resolution,
            "seed": args.seed,
        },
    )
    print(f"{len(items)} pairs -> {args.out}")
    return 0


def _relion(args: argparse.Namespace) -> int:
    from credgui.denoise.harvest import (
        iter_harvest,
        run_refinements,
        save_intermediates,
    )
    from credgui.errors import InputError

    jobs = [Path(j) for j in args.jobs]
    if args.run:
        if not args.jobs_dir:
            raise InputError(Path(args.out), "--run needs --jobs-dir")
        for p in run_refinements(
            args.run,
            args.snr,
            args.jobs_dir,
            box=args.sim_box,
            pixel_size=args.sim_pixel_size,
            n_particles=args.particles,
            auto_iter_max=args.iter_max,
        ):
            print(f"{p.item}: {p.message}", flush=True)
            run = p.result
            if run.status == "finished":
                jobs.append(Path(run.job_dir))
    if not jobs:
        raise InputError(
            Path(args.out), "no job directories given (and --run made none)"
        )
    items = []
    for job in jobs:
        n0 = len(items)
        items += list(iter_harvest(job, args.ground_truth))
        print(f"{job}: {len(items) - n0} maps", flush=True)
    save_intermediates(args.out, items, None, {"kind": "relion"})
    print(f"{len(items)} maps -> {args.out}")
    return 0
