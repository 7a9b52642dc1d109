"""Train the CW-RED U-Net denoiser on Gaussian pairs (ground-truth maps + coloured noise).

Noisy inputs are the ground truth plus Gaussian noise with the given spectral profile,
damped in the solvent by a soft mask, at a noise level drawn per sample; augmentation by the
24 rotations of the cube and random crops to --box. Adam, L2 loss, weight decay. Writes
OUT/checkpoint.pt every --checkpoint-every steps (run the same command again to resume after
a kill or Ctrl-C) and OUT/model.pt at the end, usable as `weights` in credgui.toml.

With --library (a ground-truth library from `credgui train-data library`), pairs are made at a
nominal resolution drawn per sample (3-16 A by default) and the target is the ground truth
low-passed by the matching FSC (the paper's coarsened ground truth, eq. 18-19); --val-library
gives the validation loss printed at every checkpoint. --intermediates (from `credgui train-data
relion`) trains on RELION's own x~ maps, mixed with the library's pairs by --mix.

Examples:
  credgui train --library lib/gt_train.npz --val-library lib/gt_val.npz --out runs/a --steps 8000
  credgui train --maps gt1.mrc gt2.mrc --out models/run1 --steps 20000 --box 64
  credgui train --maps gt.mrc --masks mask.mrc --noise-profile noise.txt --out m --device cuda
  credgui train --maps gt.mrc --out m --steps 100 --threads 2      # a quick CPU check

--noise-profile: two columns, spatial frequency (1/A) and relative noise amplitude.
"""

from __future__ import annotations

import argparse
import sys


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--maps", nargs="+", metavar="MRC", help="noise-free ground-truth maps")
    parser.add_argument(
        "--library", metavar="NPZ", help="ground-truth library (credgui train-data library)"
    )
    parser.add_argument("--val-library", metavar="NPZ", help="validation ground-truth library")
    parser.add_argument(
        "--intermediates",
        nargs="+",
        metavar="NPZ",
        help="RELION intermediate sets (credgui train-data relion)",
    )
    parser.add_argument(
        "--val-intermediates", nargs="+", metavar="NPZ",
        help="validation sets (held-out families) for the validation loss",
    )
    parser.add_argument(
        "--mix",
        type=float,
        default=0.5,
        help="with --library and --intermediates: fraction of samples from the intermediates",
    )
    parser.add_argument(
        "--resolution-range",
        type=float,
        nargs=2,
        default=(3.0, 16.0),
        metavar=("BEST", "WORST"),
        help="nominal resolutions (A) drawn for --library pairs",
    )
    parser.add_argument(
        "--masks",
        nargs="+",
        metavar="MRC",
        help="soft solvent masks, one per map (default: from the map)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (checkpoint.pt, model.pt)"
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--box", type=int, default=64, help="training crop, multiple of 2**depth (default 64)"
    )
    parser.add_argument(
        "--voxel-size",
        type=float,
        default=None,
        metavar="A",
        help="default: from the first map's header",
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument(
        "--noise-std",
        type=float,
        nargs=2,
        default=(0.5, 4.0),
        metavar=("LOW", "HIGH"),
        help="noise std relative to the map's std inside its mask, drawn log-uniformly",
    )
    parser.add_argument(
        "--noise-profile", metavar="TXT", help="noise amplitude vs frequency (default white)"
    )
    parser.add_argument(
        "--solvent-damping", type=float, default=0.3,
        help="noise factor in the solvent (--maps); with --library the lower end of its drawn range",
    )
    parser.add_argument(
        "--blur", type=float, nargs=2, default=(0.0, 80.0), metavar=("LO", "HI"),
        help="--library pairs: extra B-factor range (A^2) of the clean map (envelope, misalignment)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--init-weights", metavar="PT", default=None,
        help="start from this model's weights (fine-tuning); ignored when resuming a checkpoint",
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, metavar="MIN",
        help="stop at the first checkpoint after MIN minutes (resume later with the same command)",
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="processes making training pairs ahead of the network (GPU runs; same batches)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="ignore an existing checkpoint in --out"
    )
    parser.add_argument("--description", default="")


def main(args: argparse.Namespace) -> int:
    import torch

    from credgui.denoise.train import (
        GaussianPairs,
        TrainConfig,
        noise_profile_from_file,
    )
    from credgui.errors import InputError
    from credgui.relion.mrc import read_mrc, read_voxel_size

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.library or args.intermediates:
        return _train_pairs(args)
    if not args.maps:
        print("credgui train: error: give --maps, --library or --intermediates", file=sys.stderr)
        return 2
    maps = [read_mrc(p) for p in args.maps]
    masks = None
    if args.masks:
        if len(args.masks) != len(args.maps):
            raise InputError(
                args.masks[0], f"{len(args.masks)} masks given for {len(args.maps)} maps"
            )
        masks = [read_mrc(p, expect_shape=m.shape) for p, m in zip(args.masks, maps, strict=True)]
    voxel_size = args.voxel_size or read_voxel_size(args.maps[0])
    if not voxel_size > 0:
        raise InputError(args.maps[0], "header has no voxel size; give --voxel-size")
    profile = (
        noise_profile_from_file(args.noise_profile, args.box, voxel_size)
        if args.noise_profile
        else ()
    )
    try:
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            box=args.box,
            voxel_size=voxel_size,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            noise_std=tuple(args.noise_std),
            noise_profile=profile,
            solvent_damping=args.solvent_damping,
            channels=args.channels,
            depth=args.depth,
            device=args.device,
            description=args.description,
        ).validate()
        data = GaussianPairs(maps, config, masks)
    except ValueError as exc:
        print(f"credgui train: error: {exc}", file=sys.stderr)
        return 2
    return _run(args, config, data)


def _train_pairs(args: argparse.Namespace) -> int:
    """--library / --intermediates: resolution pairs (coarsened ground truth as the target)."""
    from credgui.denoise.train import TrainConfig

    data, val, meta = _pair_sources(args)
    settings_extra = {
        "resolution_range": list(args.resolution_range), "mix": args.mix,
        "solvent_damping": [args.solvent_damping, 1.0], "blur": list(args.blur),
    }
    try:
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            box=data.box,
            voxel_size=data.voxel_size,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            solvent_damping=args.solvent_damping,
            channels=args.channels,
            depth=args.depth,
            device=args.device,
            description=args.description,
            extra={**settings_extra, "sources": meta},
        ).validate()
    except ValueError as exc:
        print(f"credgui train: error: {exc}", file=sys.stderr)
        return 2
    return _run(args, config, data, val_data=val, model_metadata={"data": meta})


def _run(args: argparse.Namespace, config, data, **kwargs) -> int:
    """The training loop's progress lines; --time-limit stops after the first checkpoint past it."""
    import time

    from credgui.denoise.train import train

    start, last = time.monotonic(), None
    limit = args.time_limit * 60 if args.time_limit else None
    for p in train(
        config, data, args.out, resume=not args.no_resume, workers=args.workers,
        init_weights=args.init_weights, **kwargs
    ):
        last = p
        s = p.result
        if s.checkpoint is not None or p.done == 1:
            val_txt = f"  val {s.val_loss:.5f}" if s.val_loss is not None else ""
            print(
                f"step {p.done}/{p.total}  loss {s.loss:.5f}{val_txt}  {s.seconds:.3f} s/step",
                flush=True,
            )
        if limit is not None and s.checkpoint is not None and time.monotonic() - start > limit:
            print(
                f"time limit reached at step {p.done}: run the same command to go on "
                f"(checkpoint {s.checkpoint})"
            )
            return 0
    if last is None:
        print(f"nothing to do: {args.out} already holds {config.steps} steps")
    print(f"model: {args.out}/model.pt")
    return 0


def _init_voxel_size(args: argparse.Namespace) -> float | None:
    """The voxel size of --init-weights (a fine-tune keeps its model's grid)."""
    if not args.init_weights:
        return None
    from credgui.denoise.unet import read_model_file

    value = read_model_file(args.init_weights).get("voxel_size")
    return float(value) if value else None


def _pair_sources(args: argparse.Namespace):
    """(training data, validation data or None, JSON-able description) from the arguments."""
    from credgui.denoise.groundtruth import load_library
    from credgui.denoise.pairs import MixedPairs, PairSettings, ResolutionPairs

    best, worst = args.resolution_range
    settings = PairSettings(
        res_min=best, res_max=worst, solvent_damping=(args.solvent_damping, 1.0),
        blur=tuple(args.blur),
    )
    parts, val, meta = [], None, {}
    if args.library:
        lib = load_library(args.library)
        parts.append(ResolutionPairs(lib.maps, lib.voxel_size, settings))
        meta["library"] = {
            "path": str(args.library),
            "maps": len(lib),
            "families": sorted(set(lib.families)),
            "models": sorted(set(lib.names)),
        }
    if args.val_library:
        vlib = load_library(args.val_library)
        val = ResolutionPairs(vlib.maps, vlib.voxel_size, settings)
        meta["val_library"] = {
            "path": str(args.val_library),
            "maps": len(vlib),
            "families": sorted(set(vlib.families)),
            "models": sorted(set(vlib.names)),
        }
    if args.intermediates:
        from credgui.denoise.harvest import IntermediatePairs, load_intermediates

        voxel = args.voxel_size or (parts[0].voxel_size if parts else None) or _init_voxel_size(args)
        sets = [load_intermediates(p, with_truths=False) for p in args.intermediates]
        inter = IntermediatePairs(sets, voxel, args.box)
        meta["intermediates"] = {"paths": [str(p) for p in args.intermediates], "maps": len(inter)}
        if args.val_intermediates:
            val = IntermediatePairs([load_intermediates(p, with_truths=False) for p in args.val_intermediates],
                                    inter.voxel_size,
                                    args.box)
            meta["val_intermediates"] = {"paths": [str(p) for p in args.val_intermediates], "maps": len(val)}
        if parts:
            return MixedPairs(inter, parts[0], args.mix), val, meta
        return inter, val, meta
    return parts[0], val, meta
