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

A harvested set is written and read by ``credgui.denoise.intermediates`` (re-exported here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from credgui.denoise.pairs import coarsened_truth
from credgui.denoise.train import rotate_cube, sample_batch
from credgui.denoise.intermediates import (
    SET_FORMAT,
    SET_FORMAT_1,
    Intermediate,
    IntermediateSet,
    load_intermediates,
    save_intermediates,
)
from credgui.errors import InputError
from credgui.metrics.fsc import FSC_THRESHOLD, resolution_at, shell_index
from credgui.progress import Progress

UNREG_RE = re.compile(r"^run_it(\d{3})_half([12])_class(\d{3})_credgui_unreg\.mrc$")


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
    """Nominal resolution (A): where the FSC first falls below 0.143, interpolated as the hook's
    ``nominal_resolution``, but with the bounds where there is no crossing (``inf`` when below
    from shell 1, Nyquist when never below): every harvested map needs a number to draw by."""
    return float(resolution_at(np.asarray(fsc, float), FSC_THRESHOLD, pixel_size, box, no_crossing="bound"))


def fit_scale(x: np.ndarray, truth: np.ndarray, fsc: np.ndarray) -> float:
    """a minimising ||FT(x) - a FT(truth)||^2 over the shells where FSC > 0.5 (DC excluded)."""
    shells = shell_index(x.shape)
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


def job_ground_truth(job_dir: Path) -> Path | None:
    """The ground truth recorded by ``credgui.jobs.launch_local`` in credgui_job.json, if any."""
    from credgui.jobs.jobfile import read_job_file

    record = read_job_file(job_dir)
    gt = ((record.params or {}).get("ground_truth") or record.ground_truth) if record else None
    if gt:
        p = Path(gt)
        if not p.is_absolute():
            p = job_dir / p
        return p if p.is_file() else None
    return None


def iter_harvest(job_dir: str | Path, ground_truth: str | Path | None = None) -> Iterator[Intermediate]:
    """Every ``run_itNNN_halfN_class001_credgui_unreg.mrc`` of a job with its coarsened truth,
    at the job's own sampling (the hook's input; evaluation and training put it on the
    network's grid with ``recon.update.to_network``, as the hook does).

    Iterations without a model STAR (a run still going) are skipped.
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
        if not pixel > 0:  # a header without a voxel size: the model STAR's rlnPixelSize
            pixel = model_pixel_size(star)
        if truth is None:
            truth = read_mrc(gt_path, expect_shape=x.shape)
        fsc = read_fsc(star)
        a = fit_scale(x, truth, fsc)
        target = coarsened_truth(truth, fsc, a)
        res = fsc_resolution(fsc, x.shape[0], pixel)
        scaled = (a * truth).astype(np.float32)
        yield Intermediate(
            str(job), it, half, res, a, x.astype(np.float32), target, scaled, float(pixel),
            {"unreg": path.name},
        )


def network_pair(
    x: np.ndarray, target: np.ndarray, pixel_size: float, voxel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """(x~, x^) on the network's grid exactly as the hook feeds it (``recon.update.to_network``:
    resampled to ``voxel_size``, standardised by x~), float32."""
    from credgui.recon.update import to_network

    z, grid = to_network(x, pixel_size, voxel_size)
    return z, grid.apply(target)


def fit_training_box(z: np.ndarray, t: np.ndarray, box: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A training crop of ``box`` from a network-grid pair: a random window of a larger map; a
    smaller one padded by reflection as inference pads it (``unet.pad_reflect``)."""
    from credgui.denoise.unet import pad_reflect

    n = z.shape[0]
    if n < box:
        z, _ = pad_reflect(z, (box,) * 3)
        t, _ = pad_reflect(t, (box,) * 3)
        return z, t
    s = [int(rng.integers(0, n - box + 1)) for _ in range(3)]
    sl = tuple(slice(a, a + box) for a in s)
    return np.ascontiguousarray(z[sl]), np.ascontiguousarray(t[sl])


class IntermediatePairs:
    """Training pairs from sets: each map put on the network's grid by the hook's path
    (``network_pair``), one of the 24 cube rotations, a ``box`` crop (``fit_training_box``)."""

    def __init__(self, sets: Sequence[IntermediateSet], voxel_size: float | None = None, box: int | None = None) -> None:
        if not sets:
            raise ValueError("no intermediate sets")
        pix = np.concatenate([s.pixel_size for s in sets])
        self.voxel_size = float(voxel_size if voxel_size else pix[0])
        self.pairs = [
            network_pair(x, y, float(p), self.voxel_size)
            for s in sets for x, y, p in zip(s.inputs, s.targets, s.pixel_size, strict=True)
        ]
        self.resolution = np.concatenate([s.resolution for s in sets])
        self.box = int(box if box else max(z.shape[0] for z, _ in self.pairs))

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(
        self, rng: np.random.Generator, index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        i = int(rng.integers(len(self))) if index is None else int(index)
        k = int(rng.integers(24))
        z, t = fit_training_box(*self.pairs[i], self.box, rng)
        return (rotate_cube(z, k).astype(np.float32), rotate_cube(t, k).astype(np.float32),
                float(self.resolution[i]))

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
) -> Iterator[Progress]:
    """Simulate a data set per (model, SNR) and run a real RELION auto-refine on it with
    credgui's hook (denoiser none, so x~ is RELION's own), one after the other; yields a
    ``Progress`` (task "refine", ``item`` the job directory, ``result`` the ``RefineRun``) as
    each run ends. Expensive: minutes per run at box 64 and a few hundred particles.
    Runs whose job directory already holds RELION_JOB_EXIT_SUCCESS are not redone.
    """
    import time

    from credgui.config import HookConfig
    from credgui.jobs import RefineParams, launch_local
    from credgui.simulate.dataset import simulate_dataset
    from credgui.simulate.model import model_stem

    out = Path(out_dir)
    total = len(models) * len(snrs)

    def ended(run: RefineRun) -> Progress:
        why = f" {run.error}" if run.error else ""
        return Progress("refine", "run", k, total, f"{run.status} ({run.seconds:.0f} s){why}", item=run.job_dir,
                        result=run)

    k = 0
    for model in models:
        for snr in snrs:
            k += 1
            name = f"{model_stem(model)}_snr{snr:g}"
            data = out / name / "data"
            job = out / name / "Refine3D" / "job001"
            if (job / "RELION_JOB_EXIT_SUCCESS").exists():
                yield ended(RefineRun(str(model), snr, str(job), "finished", None, 0.0))
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
            yield ended(RefineRun(str(model), snr, str(job), status, error, time.monotonic() - t0))


__all__ = [
    "SET_FORMAT",
    "SET_FORMAT_1",
    "Intermediate",
    "IntermediatePairs",
    "IntermediateSet",
    "RefineRun",
    "fit_scale",
    "iter_harvest",
    "load_intermediates",
    "read_fsc",
    "fit_training_box",
    "network_pair",
    "run_refinements",
    "save_intermediates",
]
