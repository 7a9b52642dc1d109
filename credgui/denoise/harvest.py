"""Training pairs from real RELION refinements: every iteration's x~ with its coarsened truth.

The paper's training data (section 3.1): the unregularised half-maps x~ = B/K that RELION's
external-reconstruct hook sees at each iteration of auto-refinements of simulated data, with
targets x^ = the ground truth low-passed by multiplying its Fourier transform by that
iteration's half-map FSC (eq. 18-19). credgui's hook writes x~ as ``ROOT_credgui_unreg.mrc``;
RELION writes the FSC (``rlnGoldStandardFsc``) into ``run_itNNN_half1_model.star``.

Scale: simulated particles are normalised (noise variance 1), so x~ is the ground truth times
an unknown factor (RELION's intensity scale, norm and scale corrections). The factor is fitted
per map by least squares on the shells where FSC > 0.5 (DC excluded) and applied to x^;
without it ||x~ - x^|| would measure the scale mismatch, not the noise.

A harvested set (``save_intermediates``) is one ``.npz``: ``inputs``, ``targets``
(N, box, box, box) float32 at ``voxel_size``, ``resolution`` (A, FSC 0.143), ``iteration``,
``half``, ``scale``, ``job`` index and a JSON ``meta`` (jobs, ground truths), with a JSON
index beside it (``.json``), both written atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from credgui.denoise.pairs import FSC_THRESHOLD, coarsened_truth, shell_radius
from credgui.denoise.train import rotate_cube, sample_batch
from credgui.errors import InputError

SET_FORMAT = "credgui-intermediates/1"
UNREG_RE = re.compile(r"^run_it(\d{3})_half([12])_class(\d{3})_credgui_unreg\.mrc$")


@dataclass(frozen=True)
class Intermediate:
    """One harvested map pair, before stacking."""

    job: str
    iteration: int
    half: int
    resolution: float
    scale: float
    input: np.ndarray
    target: np.ndarray
    truth: np.ndarray | None = None  # the ground truth on x~'s scale (not low-passed)


def read_fsc(model_star: str | Path) -> np.ndarray:
    """rlnGoldStandardFsc per spectral index (shells 0..) from a ``run_itNNN_half1_model.star``."""
    from credgui.relion.star import column, get_block, read_star

    blocks = read_star(model_star)
    block = get_block(blocks, "model_class_1", model_star)
    index = np.asarray(column(block, "rlnSpectralIndex", model_star, int))
    values = np.asarray(column(block, "rlnGoldStandardFsc", model_star, float))
    fsc = np.zeros(int(index.max()) + 1 if index.size else 1)
    fsc[index] = values
    return fsc


def model_pixel_size(model_star: str | Path) -> float:
    """rlnPixelSize of a model STAR's data_model_general block."""
    from credgui.relion.star import get_block, read_star, scalar

    blocks = read_star(model_star)
    return float(
        scalar(
            get_block(blocks, "model_general", model_star), "rlnPixelSize", model_star
        )
    )


def fsc_resolution(fsc: np.ndarray, box: int, pixel_size: float) -> float:
    """Nominal resolution (A): where the FSC first falls below 0.143 (the hook's definition)."""
    from credgui.metrics.fsc import resolution_at

    return float(resolution_at(np.asarray(fsc, float), FSC_THRESHOLD, pixel_size, box))


def fit_scale(x: np.ndarray, truth: np.ndarray, fsc: np.ndarray) -> float:
    """a minimising ||FT(x) - a FT(truth)||^2 over the shells where FSC > 0.5 (DC excluded)."""
    box = x.shape[0]
    shells = np.rint(shell_radius(box)).astype(np.int64)
    good = np.zeros(shells.max() + 1, bool)
    n = min(len(fsc), len(good))
    good[:n] = np.asarray(fsc[:n]) > 0.5
    good[0] = False
    if not good.any():
        good[1 : min(4, len(good))] = True
    sel = good[shells]
    fx, ft = (
        np.fft.rfftn(x.astype(np.float64))[sel],
        np.fft.rfftn(truth.astype(np.float64))[sel],
    )
    den = float(np.sum(np.abs(ft) ** 2))
    return float(np.sum((fx * np.conj(ft)).real) / den) if den > 0 else 1.0


def resample(
    volume: np.ndarray, pixel_size: float, new_pixel_size: float
) -> np.ndarray:
    """Fourier crop/pad a cubic volume to the box nearest ``box * pixel / new_pixel`` (same
    physical box, values kept); the voxel size becomes ``box * pixel / new_box`` (~new_pixel)."""
    n = volume.shape[0]
    m = round(n * pixel_size / new_pixel_size)
    if m == n:
        return volume.astype(np.float32)
    f = np.fft.fftshift(np.fft.fftn(volume.astype(np.float64)))
    out = np.zeros((m, m, m), complex)
    k = min(n, m)
    a0, b0 = n // 2 - k // 2, m // 2 - k // 2
    out[b0 : b0 + k, b0 : b0 + k, b0 : b0 + k] = f[
        a0 : a0 + k, a0 : a0 + k, a0 : a0 + k
    ]
    vol = np.fft.ifftn(np.fft.ifftshift(out)).real * (m**3 / n**3)
    return vol.astype(np.float32)


def fit_box(volume: np.ndarray, box: int) -> np.ndarray:
    """Centre-crop, or pad by reflection, a cubic volume to ``box`` (centre voxel n//2 kept)."""
    n = volume.shape[0]
    if n == box:
        return volume
    if n > box:
        s = n // 2 - box // 2
        return np.ascontiguousarray(volume[s : s + box, s : s + box, s : s + box])
    lo = box // 2 - n // 2
    return np.pad(volume, [(lo, box - n - lo)] * 3, mode="reflect")


def job_ground_truth(job_dir: Path) -> Path | None:
    """The ground truth recorded by ``credgui.jobs.launch_local`` in credgui_job.json, if any."""
    from credgui.jobs.launch import read_job_file

    record = read_job_file(job_dir) or {}
    params = record.get("params", record)
    gt = params.get("ground_truth") if isinstance(params, dict) else None
    if gt:
        p = Path(gt)
        if not p.is_absolute():
            p = job_dir / p
        return p if p.is_file() else None
    return None


def iter_harvest(
    job_dir: str | Path,
    ground_truth: str | Path | None = None,
    *,
    voxel_size: float | None = None,
    box: int | None = None,
) -> Iterator[Intermediate]:
    """Every ``run_itNNN_halfN_class001_credgui_unreg.mrc`` of a job with its coarsened truth.

    Iterations without a model STAR (a run still going) are skipped. voxel_size/box: resample
    and crop/pad both maps (None: keep the job's).
    """
    from credgui.relion.mrc import read_mrc, read_voxel_size

    job = Path(job_dir)
    if not job.is_dir():
        raise InputError(job, "job directory not found")
    gt_path = Path(ground_truth) if ground_truth else job_ground_truth(job)
    if gt_path is None:
        raise InputError(
            job, "no ground truth: give --ground-truth (credgui_job.json records none)"
        )
    files = sorted(p for p in job.iterdir() if UNREG_RE.match(p.name))
    if not files:
        raise InputError(
            job, "no *_credgui_unreg.mrc maps (not a credgui hook job, or none yet)"
        )
    truth = None
    for path in files:
        it, half, cls = (int(g) for g in UNREG_RE.match(path.name).groups())
        if cls != 1:
            continue
        star = job / f"run_it{it:03d}_half1_model.star"
        if not star.is_file():
            continue
        x = read_mrc(path)
        pixel = read_voxel_size(path)
        if (
            not pixel > 0
        ):  # a header without a voxel size: the model STAR's rlnPixelSize
            pixel = model_pixel_size(star)
        if truth is None:
            truth = read_mrc(gt_path, expect_shape=x.shape)
        fsc = read_fsc(star)
        a = fit_scale(x, truth, fsc)
        target = coarsened_truth(truth, fsc, a)
        res = fsc_resolution(fsc, x.shape[0], pixel)
        scaled = (a * truth).astype(np.float32)
        if voxel_size is not None and abs(voxel_size - pixel) > 1e-4:
            x, target, scaled = (
                resample(v, pixel, voxel_size) for v in (x, target, scaled)
            )
        if box is not None:
            x, target, scaled = (fit_box(v, box) for v in (x, target, scaled))
        yield Intermediate(
            str(job), it, half, res, a, x.astype(np.float32), target, scaled
        )


def save_intermediates(
    path: str | Path,
    items: Sequence[Intermediate],
    voxel_size: float,
    meta: dict | None = None,
) -> Path:
    """Write a harvested set (npz + JSON index beside it), atomically."""
    path = Path(path)
    if not items:
        raise InputError(path, "no intermediate maps to save")
    jobs = sorted({it.job for it in items})
    rows = [
        {
            "job": it.job,
            "iteration": it.iteration,
            "half": it.half,
            "resolution": it.resolution,
            "scale": it.scale,
        }
        for it in items
    ]
    full = {
        "format": SET_FORMAT,
        "voxel_size": voxel_size,
        "jobs": jobs,
        **(meta or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    from credgui._io import atomic_open, write_text_atomic

    with atomic_open(path) as fh:
        np.savez(
            fh,
            inputs=np.stack([it.input for it in items]),
            targets=np.stack([it.target for it in items]),
            **(
                {"truths": np.stack([it.truth for it in items])}
                if all(it.truth is not None for it in items)
                else {}
            ),
            resolution=np.array([it.resolution for it in items]),
            iteration=np.array([it.iteration for it in items]),
            half=np.array([it.half for it in items]),
            scale=np.array([it.scale for it in items]),
            job=np.array([jobs.index(it.job) for it in items]),
            voxel_size=np.float64(voxel_size),
            meta=np.array(json.dumps(full)),
        )
    write_text_atomic(path.with_suffix(".json"), json.dumps({**full, "maps": rows}, indent=1))
    return path


@dataclass(frozen=True)
class IntermediateSet:
    inputs: np.ndarray
    targets: np.ndarray
    resolution: np.ndarray
    voxel_size: float
    meta: dict
    truths: np.ndarray | None = (
        None  # ground truth on x~'s scale, when the set holds it
    )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def load_intermediates(path: str | Path) -> IntermediateSet:
    """A set written by ``save_intermediates``; InputError naming the file otherwise."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            s = IntermediateSet(
                z["inputs"].astype(np.float32, copy=False),
                z["targets"].astype(np.float32, copy=False),
                z["resolution"].astype(np.float64),
                float(z["voxel_size"]),
                meta,
                z["truths"].astype(np.float32, copy=False)
                if "truths" in z.files
                else None,
            )
    except FileNotFoundError:
        raise InputError(path, "intermediate set not found") from None
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            path, f"not a credgui intermediate set ({' '.join(str(exc).split())[:160]})"
        ) from None
    if meta.get("format") != SET_FORMAT:
        raise InputError(
            path, f"not a credgui intermediate set (format {meta.get('format')!r})"
        )
    return s


class IntermediatePairs:
    """Training pairs from harvested sets: a random map, one of the 24 cube rotations,
    standardised by x~'s mean and std (as the denoiser does at inference)."""

    def __init__(self, sets: Sequence[IntermediateSet]) -> None:
        if not sets:
            raise ValueError("no intermediate sets")
        vs = {round(s.voxel_size, 4) for s in sets}
        boxes = {s.inputs.shape[1] for s in sets}
        if len(vs) != 1 or len(boxes) != 1:
            raise ValueError(
                f"intermediate sets differ in voxel size {vs} or box {boxes}"
            )
        self.inputs = np.concatenate([s.inputs for s in sets])
        self.targets = np.concatenate([s.targets for s in sets])
        self.resolution = np.concatenate([s.resolution for s in sets])
        self.voxel_size = float(sets[0].voxel_size)
        self.box = int(self.inputs.shape[1])

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def sample(
        self, rng: np.random.Generator, index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        i = int(rng.integers(len(self))) if index is None else int(index)
        k = int(rng.integers(24))
        x = rotate_cube(self.inputs[i], k)
        y = rotate_cube(self.targets[i], k)
        mean, std = float(x.mean()), float(x.std()) or 1.0
        return (
            ((x - mean) / std).astype(np.float32),
            ((y - mean) / std).astype(np.float32),
            float(self.resolution[i]),
        )

    def batch(self, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch of ``step`` (deterministic in seed and step): (size, 1, box^3) x2."""
        return sample_batch(self.sample, seed, step, size)


@dataclass(frozen=True)
class RefineRun:
    """One simulate + refine run of ``run_refinements``: its job directory and how it ended."""

    model: str
    snr: float
    job_dir: str
    status: str
    error: str | None
    seconds: float


def run_refinements(
    models: Sequence[str | Path],
    snrs: Sequence[float],
    out_dir: str | Path,
    *,
    box: int = 64,
    pixel_size: float = 1.5,
    n_particles: int = 500,
    auto_iter_max: int | None = 10,
    mpi_procs: int = 3,
    seed: int = 0,
    timeout_s: float = 7200.0,
) -> Iterator[RefineRun]:
    """Simulate a data set per (model, SNR) and run a real RELION auto-refine on it with
    credgui's hook (denoiser none, so x~ is RELION's own), one after the other; yields each
    finished run. Expensive: minutes per run at box 64 and a few hundred particles.
    Runs whose job directory already holds RELION_JOB_EXIT_SUCCESS are not redone.
    """
    import time

    from credgui.config import HookConfig
    from credgui.jobs import RefineParams, launch_local
    from credgui.simulate.dataset import simulate_dataset
    from credgui.simulate.model import model_stem

    out = Path(out_dir)
    k = 0
    for model in models:
        for snr in snrs:
            k += 1
            name = f"{model_stem(model)}_snr{snr:g}"
            data = out / name / "data"
            job = out / name / "Refine3D" / "job001"
            if (job / "RELION_JOB_EXIT_SUCCESS").exists():
                yield RefineRun(str(model), snr, str(job), "finished", None, 0.0)
                continue
            t0 = time.monotonic()
            manifest = simulate_dataset(
                model,
                data,
                box=box,
                pixel_size=pixel_size,
                n_particles=n_particles,
                snr=snr,
                seed=seed + k,
                force=True,
            )
            project = out / name
            for f in (
                "particles.star",
                "particles.mrcs",
                "initial_model.mrc",
                "ground_truth.mrc",
                "mask.mrc",
                "true_poses.star",
            ):
                link = project / f
                if not link.exists():
                    os.symlink(Path("data") / f, link)
            params = RefineParams(
                particles_star=project / "particles.star",
                initial_model=project / "initial_model.mrc",
                job_dir=job,
                particle_diameter=float(manifest.particle_diameter_angst),
                absolute_greyscale=True,
                offset_range=3.0,
                offset_step=2.0,
                auto_iter_max=auto_iter_max,
                mpi_procs=mpi_procs,
                ground_truth=project / "ground_truth.mrc",
                mask=project / "mask.mrc",
                hook_config=HookConfig(denoiser="none"),
            )
            handle = launch_local(params)
            try:
                state = handle.wait(timeout=timeout_s, poll_s=5.0)
                status, error = state.status, state.error
            except TimeoutError:
                handle.stop()
                status, error = "timeout", f"not finished after {timeout_s:.0f} s"
            yield RefineRun(
                str(model), snr, str(job), status, error, time.monotonic() - t0
            )


__all__ = [
    "IntermediatePairs",
    "IntermediateSet",
    "RefineRun",
    "fit_scale",
    "iter_harvest",
    "load_intermediates",
    "read_fsc",
    "resample",
    "run_refinements",
    "save_intermediates",
]
