"""RELION-faithful training pairs without a refinement: RELION's own B and K from
``relion_reconstruct --external_reconstruct`` on simulated half-sets with drawn pose errors.

Why: the paper trained its network on the unregularised maps x~ = B/K of real auto-refinements
(section 3.1); Gaussian pairs (``pairs.ResolutionPairs``) miss what RELION's maps have (CTF-
weighted sums of projections, misalignment blur, outliers, the K-floor, un-damped solvent noise),
and a network trained on them shrinks real maps (issue 10: amplitude 0.2-0.5 at 10-15 A). A full
refinement per map costs minutes; one ``relion_reconstruct`` per half costs about a second.

Per stack (one atomic model):
  1. a simulated data set (``simulate.dataset``: CTF, white noise, SNR as the paper) at a drawn
     pixel size (log-uniform in ``pixel_size``) and box (the particle's diameter times a drawn
     factor, even, at most ``max_box``);
Per pair of half maps (``pairs_per_stack`` per stack):
  2. a random subset of the particles, split at random into two halves (``rlnRandomSubset``);
  3. poses = the true poses with a drawn error: a rotation by |N(0, sigma)| about a random axis
     (sigma log-uniform in ``angle_error``), a fraction of outliers at uniformly random
     orientations, shifts with N(0, ``shift_error``) px;
  4. ``relion_reconstruct --subset h --ctf --external_reconstruct`` per half (the two in
     parallel), with a program that only writes a blank result, so RELION's B and K are kept;
  5. x~ = B/K by the hook's own functions (``recon.update.unregularised_fourier``,
     ``recon.gridding.window_real``), first over the whole band; the FSC of the two halves'
     x~ (RELION's gold-standard FSC is computed from these same unregularised sums) gives the
     nominal resolution R; then x~ again with RELION's band limit at that resolution (current
     size = 2 (shell(R) + incr_size), RELION's auto-refine rule, incr_size 10);
  6. the target x^ = a FT^-1[FSC FT(truth)] (eq. 18-19), a the least-squares scale of x~ to the
     truth on the shells with FSC > 0.5 (``harvest.fit_scale``).
The maps stay at their own sampling: training and evaluation put them on the network's grid
with ``recon.update.to_network``, the hook's path.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from credgui.errors import InputError
from credgui.progress import Progress, eta_s

INCR_SIZE = 10
"""Shells RELION's auto-refine keeps beyond the current resolution (relion_refine --incr_size)."""

_BLANK_RESULT = """#!/bin/sh
# credgui: keep RELION's external-reconstruct arrays; hand back a blank map of the right box.
res=$(awk '$1=="_rlnExtReconsResult"{print $2}' "$1")
cp "$(dirname "$0")/blank.mrc" "$res"
"""


@dataclass(frozen=True)
class ReconSettings:
    """Ranges drawn per stack (pixel size, box, particles, SNR) and per pair (the rest)."""

    pixel_size: tuple[float, float] = (1.0, 2.6)  # A/px, log-uniform
    box_factor: tuple[float, float] = (1.4, 2.4)  # box / particle diameter
    min_box: int = 48
    max_box: int = 112
    particles: int = 4000  # per stack
    subset: tuple[int, int] = (400, 4000)  # particles per pair (both halves), log-uniform
    snr: tuple[float, float] = (0.005, 0.3)  # log-uniform
    angle_error: tuple[float, float] = (0.3, 12.0)  # deg, sigma, log-uniform
    outliers: tuple[float, float] = (0.0, 0.35)  # fraction at random orientations
    shift_error: tuple[float, float] = (0.0, 1.5)  # px, sigma
    pairs_per_stack: int = 6
    max_resolution: float = 25.0  # A: pairs coarser than this are dropped (no use)


@dataclass(frozen=True)
class ReconPair:
    """One half map's pair: x~ and x^ at the map's own sampling (box, box, box) float32."""

    model: str
    stack: int
    half: int
    pixel_size: float
    resolution: float  # A, FSC 0.143 of the two halves' x~
    scale: float  # a: x~ ~ a * truth
    fsc: np.ndarray  # per shell 0..box//2
    input: np.ndarray
    target: np.ndarray
    truth: np.ndarray  # a * truth (not low-passed)
    draws: dict  # what was drawn (subset, angle_error, outliers, shift_error, snr, current_size)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _perturb(rng: np.random.Generator, matrices: np.ndarray, sigma_deg: float, outliers: float) -> np.ndarray:
    """R_err @ R for each pose: R_err a rotation by |N(0, sigma)| about a random axis; a
    fraction ``outliers`` replaced by uniformly random rotations."""
    from credgui.simulate.projection import random_rotations

    n = len(matrices)
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    ang = np.deg2rad(np.abs(rng.normal(0.0, sigma_deg, n)))
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = axis[:, 2], -axis[:, 1], axis[:, 0]
    s, c = np.sin(ang)[:, None, None], np.cos(ang)[:, None, None]
    r_err = np.eye(3)[None] + s * k + (1 - c) * (k @ k)
    out = r_err @ matrices
    bad = rng.uniform(size=n) < outliers
    if bad.any():
        out[bad] = random_rotations(int(bad.sum()), rng)
    return out


def _blank_program(work: Path, box: int) -> Path:
    from credgui.relion.mrc import write_mrc_atomic

    write_mrc_atomic(work / "blank.mrc", np.zeros((box, box, box), np.float32), 1.0)
    prog = work / "keep_arrays.sh"
    prog.write_text(_BLANK_RESULT)
    prog.chmod(0o755)
    return prog


def _unregularised(root: Path, current_size: int | None = None) -> tuple[np.ndarray, int, float]:
    """x~ (box, box, box) from RELION's kept arrays ``ROOT_external_reconstruct_*.mrc`` by the
    hook's functions; current_size None = RELION's own (the whole band)."""
    from credgui.recon.gridding import window_real
    from credgui.recon.update import unregularised_fourier
    from credgui.relion.mrc import read_mrc
    from credgui.relion.star import get_block, read_star, scalar

    star = Path(f"{root}_external_reconstruct.star")
    general = get_block(read_star(star), "external_reconstruct_general", star)
    ori = scalar(general, "rlnOriginalImageSize", star, int)
    pad = scalar(general, "rlnPaddingFactor", star, float)
    cur = scalar(general, "rlnCurrentImageSize", star, int) if current_size is None else current_size
    p = int(round(pad * ori))
    shape = (p, p, p // 2 + 1)
    data = np.empty(shape, np.complex64)
    data.real = read_mrc(f"{root}_external_reconstruct_data_real.mrc", shape)
    data.imag = read_mrc(f"{root}_external_reconstruct_data_imag.mrc", shape)
    weight = np.asarray(read_mrc(f"{root}_external_reconstruct_weight.mrc", shape), np.float32)
    x = window_real(unregularised_fourier(data, weight, cur, pad), ori, pad, soft_edge=False)
    return x, ori, pad


def relion_current_size(resolution: float, box: int, pixel_size: float, incr_size: int = INCR_SIZE) -> int:
    """RELION auto-refine's current image size at a resolution: 2 (shell + incr_size), even,
    at most the box."""
    shell = box * pixel_size / resolution
    return int(min(box, 2 * (int(math.ceil(shell)) + incr_size)))


def iter_stack_pairs(
    model: str | Path,
    work_dir: str | Path,
    seed: int,
    settings: ReconSettings = ReconSettings(),
    relion_reconstruct: str = "relion_reconstruct",
) -> Iterator[ReconPair]:
    """The pairs of one stack (see the module docstring); RELION's files live in a temporary
    folder under ``work_dir`` that is removed at the end. InputError if RELION fails."""
    from credgui.denoise.harvest import fit_scale
    from credgui.denoise.pairs import coarsened_truth
    from credgui.metrics.fsc import fsc as fsc_of
    from credgui.recon.schedule import nominal_resolution
    from credgui.relion.mrc import read_mrc
    from credgui.relion.star import format_star, read_star
    from credgui.simulate.dataset import simulate_dataset
    from credgui.simulate.model import model_info
    from credgui.simulate.projection import euler_to_matrix, matrix_to_euler

    st = settings
    rng = np.random.default_rng(seed)
    info = model_info(model)
    pixel = _loguniform(rng, *st.pixel_size)
    diameter = 2.0 * float(info.max_radius) + 10.0
    box = int(2 * round(diameter * rng.uniform(*st.box_factor) / pixel / 2))
    fit = int(2 * math.ceil(float(info.max_radius) / pixel + 5))  # simulate's wrap-round margin
    box = max(box, fit, st.min_box)
    if box > st.max_box:  # a coarser pixel keeps the physical box
        pixel *= box / st.max_box
        box = st.max_box
    snr = _loguniform(rng, *st.snr)
    work_root = Path(work_dir)
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".stack{seed}.", dir=work_root)).resolve()
    try:
        data = work / "data"
        manifest = simulate_dataset(model, data, box=box, pixel_size=pixel, n_particles=st.particles,
                                    snr=snr, seed=int(seed) % (2**31), force=True)
        truth = read_mrc(manifest.ground_truth)
        star = read_star(manifest.particles_star)
        poses = read_star(manifest.true_poses_star)["particles"]
        n = len(poses["rlnImageName"])
        true_m = euler_to_matrix(*(np.asarray(poses[k], float) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
        prog = _blank_program(work, box)
        env = {**os.environ, "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE": str(prog), "OMP_NUM_THREADS": "1"}
        for j in range(st.pairs_per_stack):
            m = min(n, int(round(_loguniform(rng, *st.subset))))
            pick = np.sort(rng.choice(n, size=m, replace=False))
            sigma = _loguniform(rng, *st.angle_error)
            outl = float(rng.uniform(*st.outliers))
            shift_sd = float(rng.uniform(*st.shift_error))
            rot, tilt, psi = matrix_to_euler(_perturb(rng, true_m[pick], sigma, outl))
            parts = {k: [v[i] for i in pick] for k, v in star["particles"].items()}
            parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"] = (
                [f"{a:.6f}" for a in arr] for arr in (rot, tilt, psi))
            for axis in ("X", "Y"):
                true_o = np.asarray(poses[f"rlnOrigin{axis}Angst"], float)[pick]
                parts[f"rlnOrigin{axis}Angst"] = [f"{o:.6f}" for o in true_o + rng.normal(0, shift_sd, m) * pixel]
            subset = rng.permutation(np.arange(m) % 2) + 1
            parts["rlnRandomSubset"] = [str(s) for s in subset]
            posed = data / f"posed{j}.star"
            posed.write_text(format_star({"optics": star["optics"], "particles": parts}, loops={"optics", "particles"}))
            roots = [work / f"p{j}_half{h}" for h in (1, 2)]
            procs = [
                subprocess.Popen([relion_reconstruct, "--i", posed.name, "--o", str(r.resolve()) + ".mrc",
                                  "--subset", str(h), "--ctf", "--external_reconstruct"],
                                 cwd=data, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for h, r in zip((1, 2), roots, strict=True)
            ]
            for p in procs:
                _, err = p.communicate(timeout=600)
                if p.returncode != 0:
                    last = (err or "").strip().splitlines()[-1:] or ["no message"]
                    raise InputError(posed, f"relion_reconstruct failed (exit {p.returncode}): {last[0]}")
            full = [_unregularised(r)[0] for r in roots]
            fsc = fsc_of(full[0], full[1])
            res = nominal_resolution(fsc, pixel, box)
            if res is None:  # above 0.143 to Nyquist: RELION would use the whole box
                res = 2.0 * pixel
            if res > st.max_resolution:
                continue
            cur = relion_current_size(res, box, pixel)
            fsc_cut = fsc.copy()
            fsc_cut[cur // 2 + 1:] = 0.0
            draws = {"subset": m, "angle_error": sigma, "outliers": outl, "shift_error": shift_sd, "snr": snr,
                     "current_size": cur, "particles_per_half": int(m // 2)}
            for h, r in zip((1, 2), roots, strict=True):
                x = _unregularised(r, cur)[0] if cur < box else full[h - 1]
                a = fit_scale(x, truth, fsc_cut)
                target = coarsened_truth(truth, fsc_cut, a)
                yield ReconPair(str(model), int(seed), h, float(pixel), float(res), float(a), fsc_cut,
                                x.astype(np.float32), target, (a * truth).astype(np.float32), draws)
            for r in roots:
                for f in r.parent.glob(r.name + "*"):
                    f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class StackResult:
    """What ``iter_reconstructed_set`` has made so far (the ``result`` of its ``Progress``, whose
    ``done``/``total`` count stacks): map pairs in all shards, the last stack's error if any."""

    pairs: int
    last_error: str | None = None


def _stack_progress(done: int, stacks: int, pairs: int, elapsed: float, error: str | None = None) -> Progress:
    return Progress("reconstruct", "stack", done, stacks, f"{pairs} maps" + (f"; skipped: {error}" if error else ""),
                    elapsed_s=elapsed, eta_s=eta_s(done, stacks, elapsed), result=StackResult(pairs, error))


def iter_reconstructed_set(
    models: Sequence[str | Path],
    out: str | Path,
    stacks: int,
    seed: int = 0,
    settings: ReconSettings = ReconSettings(),
    meta: dict | None = None,
) -> Iterator[Progress]:
    """``stacks`` stacks cycling through ``models`` (stack k: model k mod len, its seed drawn
    from (seed, k)); each stack's pairs go to the shard ``out/stack_KKKKK.npz``
    (``intermediates.save_intermediates``), so an interrupted run keeps what it made and resumes
    (shards already there are skipped). ``intermediates.load_intermediates(out)`` reads them all."""
    from credgui.denoise.intermediates import Intermediate, save_intermediates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    pairs = 0
    for k in range(stacks):
        shard = out / f"stack_{k:05d}.npz"
        if shard.exists():
            pairs += int(np.load(shard)["resolution"].size)
            yield _stack_progress(k + 1, stacks, pairs, time.monotonic() - t0)
            continue
        stack_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        model = models[k % len(models)]
        error = None
        items = []
        try:
            for p in iter_stack_pairs(model, out, stack_seed, settings):
                items.append(Intermediate(
                    job=Path(p.model).name, iteration=0, half=p.half, resolution=p.resolution, scale=p.scale,
                    input=p.input, target=p.target, truth=p.truth, pixel_size=p.pixel_size,
                    extra={"stack": k, **p.draws}))
        except (InputError, subprocess.TimeoutExpired, ValueError) as exc:
            error = f"{Path(model).name}: {exc}"
        if items:
            save_intermediates(shard, items, meta={"source": "relion_reconstruct", "settings": asdict(settings),
                                                   **(meta or {})})
            pairs += len(items)
        yield _stack_progress(k + 1, stacks, pairs, time.monotonic() - t0, error)


__all__ = ["INCR_SIZE", "ReconPair", "ReconSettings", "StackResult", "iter_reconstructed_set",
           "iter_stack_pairs", "relion_current_size"]
