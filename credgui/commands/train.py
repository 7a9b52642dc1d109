"""Train the CW-RED U-Net denoiser on Gaussian pairs (ground-truth maps + coloured noise).

Noisy inputs are the ground truth plus Gaussian noise with the given spectral profile,
damped in the solvent by a soft mask, at a noise level drawn per sample; augmentation by the
24 rotations of the cube and random crops to --box. Adam, L2 loss, weight decay. Writes
OUT/checkpoint.pt every --checkpoint-every steps (run the same command again to resume after
a kill or Ctrl-C) and OUT/model.pt at the end, usable as `weights` in credgui.toml.

Examples:
  credgui train --maps gt1.mrc gt2.mrc --out models/run1 --steps 20000 --box 64
  credgui train --maps gt.mrc --masks mask.mrc --noise-profile noise.txt --out m --device cuda
  credgui train --maps gt.mrc --out m --steps 100 --threads 2      # a quick CPU check

--noise-profile: two columns, spatial frequency (1/A) and relative noise amplitude.
"""

from __future__ import annotations

import argparse
import sys


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--maps", nargs="+", required=True, metavar="MRC", help="noise-free ground-truth maps"
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
    parser.add_argument("--solvent-damping", type=float, default=0.3)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--no-resume", action="store_true", help="ignore an existing checkpoint in --out"
    )
    parser.add_argument("--description", default="")


def main(args: argparse.Namespace) -> int:
    import torch

    from credgui.denoise.train import GaussianPairs, TrainConfig, noise_profile_from_file, train
    from credgui.errors import InputError
    from credgui.relion.mrc import read_mrc, read_voxel_size

    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
    last = None
    for p in train(config, data, args.out, resume=not args.no_resume):
        last = p
        if p.checkpoint is not None or p.step == 1:
            print(
                f"step {p.step}/{p.steps}  loss {p.loss:.5f}  {p.seconds:.2f} s/step  "
                f"{'checkpoint ' + str(p.checkpoint) if p.checkpoint else ''}",
                flush=True,
            )
    if last is None:
        print(f"nothing to do: {args.out} already holds {config.steps} steps")
    print(f"model: {args.out}/model.pt")
    return 0
