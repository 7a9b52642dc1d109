"""Confidence curve of a U-Net denoiser (paper Fig. 1c) and the lambda thresholds it suggests.

On validation maps (families the network never saw), the single-pass ratios
||f(x~) - x^|| / ||x~ - x^|| (L1 and L2) per bin of nominal resolution, with x^ the coarsened
ground truth. Writes MODEL's name + .eval.json and .eval.png beside the weights (or --out
PREFIX), and stores lambda_low_res (where the L2 ratio first stays below 0.95) and
lambda_high_res (where it plateaus) in the weights file, so the hook uses them when
credgui.toml sets none (--no-store: leave the weights alone).

Validation maps: --sets (from `credgui train-data gaussian|relion`), and/or --library (a
validation ground-truth library: Gaussian pairs are made from it at --resolutions).

Examples:
  credgui evaluate-denoiser resources/models/cwred_unet.pt --library lib/gt_val.npz
  credgui evaluate-denoiser model.pt --sets val_relion.npz val_gauss.npz --threads 2
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="U-Net weights file (.pt)")
    parser.add_argument(
        "--sets",
        nargs="+",
        default=[],
        metavar="NPZ",
        help="validation sets (credgui train-data gaussian | relion)",
    )
    parser.add_argument(
        "--library", metavar="NPZ", help="validation ground-truth library"
    )
    parser.add_argument(
        "--resolutions",
        nargs="+",
        type=float,
        default=[3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0],
    )
    parser.add_argument("--per-resolution", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", metavar="PREFIX", help="default: MODEL without .pt")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-low", type=float, metavar="A",
        help="clip lambda_low_res to this (default: the worst resolution the model was trained on)",
    )
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="do not write the thresholds into the weights file",
    )


def main(args: argparse.Namespace) -> int:
    from credgui._io import write_json_atomic
    from credgui.denoise.evaluate import evaluate_sets, plot_curve, store_in_model
    from credgui.denoise.intermediates import IntermediateSet, load_intermediates
    from credgui.denoise.unet import load_unet_denoiser
    from credgui.errors import InputError

    den = load_unet_denoiser(args.model, args.device, threads=args.threads)
    sets, sources = [], []
    for p in args.sets:
        sets.append(load_intermediates(p))
        sources.append(str(p))
    if args.library:
        import numpy as np

        from credgui.denoise.groundtruth import load_library
        from credgui.denoise.pairs import PairSettings, ResolutionPairs, fixed_pairs

        lib = load_library(args.library)
        src = ResolutionPairs(
            lib.maps,
            lib.voxel_size,
            PairSettings(res_min=min(args.resolutions), res_max=max(args.resolutions)),
        )
        items = fixed_pairs(src, list(args.resolutions), args.per_resolution, args.seed)
        sets.append(
            IntermediateSet(
                [i.input for i in items],
                [i.target for i in items],
                np.array([i.resolution for i in items]),
                np.full(len(items), lib.voxel_size),
                {"kind": "gaussian", "library": str(args.library)},
                [i.truth for i in items],
            )
        )
        sources.append(
            f"gaussian pairs from {args.library} ({', '.join(sorted(set(lib.families)))})"
        )
    if not sets:
        raise InputError(
            Path(args.model), "no validation maps: give --sets and/or --library"
        )
    from credgui.denoise.unet import read_model_file

    extra = (
        (read_model_file(args.model).get("training") or {}).get("config") or {}
    ).get("extra") or {}
    train_range = extra.get("resolution_range")
    max_low = float(max(train_range)) if train_range else None
    if args.max_low is not None:
        max_low = float(args.max_low)
    curve, details = evaluate_sets(den, sets, sources=sources, max_low=max_low,
                                   voxel_size=den.info.voxel_size)
    prefix = Path(args.out) if args.out else Path(args.model).with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".eval.json")
    png_path = prefix.with_name(prefix.name + ".eval.png")
    write_json_atomic(json_path, {"model": str(args.model), **curve.to_dict(), **details}, allow_nan=True)
    has_png = plot_curve(
        png_path, curve, f"{Path(args.model).name}: validation, {curve.n_maps} maps"
    )
    truth = {b.lo: b for b in curve.bins_truth}
    print(
        "ratios ||f(x~) - ref|| / ||x~ - ref||, ref = coarsened truth x^ | ground truth"
    )
    print(
        f"{'resolution (A)':>18} {'n':>4} {'L2 x^':>7} {'max':>6} {'L1 x^':>7} {'amp':>6} {'L2 gt':>7} {'L1 gt':>7}"
    )
    for b in curve.bins:
        t = truth.get(b.lo)
        gt = f"{t.l2_ratio:7.3f} {t.l1_ratio:7.3f}" if t else f"{'-':>7} {'-':>7}"
        amp = f"{b.amplitude:6.2f}" if b.amplitude is not None else f"{'-':>6}"
        print(
            f"{b.lo:6.1f}-{b.hi:<6.1f} {b.resolution:5.1f} {b.n:4d} "
            f"{b.l2_ratio:7.3f} {b.l2_ratio_max:6.2f} {b.l1_ratio:7.3f} {amp} {gt}"
        )
    print(
        f"proposed lambda_low_res {curve.lambda_low_res} A, lambda_high_res "
        f"{curve.lambda_high_res} A (every map finer than lambda_low_res: L2 ratio vs x^ < 0.9)"
    )
    if not args.no_store:
        store_in_model(args.model, curve)
        print(f"stored in {args.model}")
    print(
        f"curve: {json_path}"
        + (f", {png_path}" if has_png else " (no matplotlib: no PNG)")
    )
    return 0
