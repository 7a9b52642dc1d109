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

from credgui.denoise.pairs import coarsened_truth
from credgui.denoise.train import rotate_cube, sample_batch
from credgui.errors import InputError
from credgui.metrics.fsc import FSC_THRESHOLD, resolution_at, shell_index

SET_FORMAT = "credgui-intermediates/2"
SET_FORMAT_1 = "credgui-intermediates/1"
UNREG_RE = re.compile(r"^run_it(\d{3})_half([12])_class(\d{3})_credgui_unreg\.mrc$")


@dataclass(frozen=True)
class Intermediate:
    """One map pair, at the map's own sampling (box, box, box) float32: x~, its target x^ and
    (optional) the ground truth on x~'s scale. ``pixel_size`` None: the set's ``voxel_size``."""

    job: str
    iteration: int
    half: int
    resolution: float
    scale: float
    input: np.ndarray
    target: np.ndarray
    truth: np.ndarray | None = None  # the ground truth on x~'s scale (not low-passed)
    pixel_size: float | None = None  # A/px of these maps
    extra: dict | None = None  # JSON-able per-map facts (what was drawn, the hook call)


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


def save_intermediates(
    path: str | Path,
    items: Sequence[Intermediate],
    voxel_size: float | None = None,
    meta: dict | None = None,
) -> Path:
    """Write a set (format 2: every map at its own box and pixel size; npz + JSON index
    beside it), atomically. ``voxel_size``: the pixel size of items that give none."""
    path = Path(path)
    if not items:
        raise InputError(path, "no intermediate maps to save")
    pixels = [it.pixel_size if it.pixel_size is not None else voxel_size for it in items]
    if any(p is None or not p > 0 for p in pixels):
        raise InputError(path, "every map needs a pixel size (give voxel_size)")
    jobs = sorted({it.job for it in items})
    rows = [
        {"job": it.job, "iteration": it.iteration, "half": it.half, "resolution": it.resolution,
         "scale": it.scale, "pixel_size": p, "box": int(it.input.shape[0]), **(it.extra or {})}
        for it, p in zip(items, pixels, strict=True)
    ]
    full = {"format": SET_FORMAT, "jobs": jobs, **(meta or {})}
    arrays: dict[str, np.ndarray] = {}
    for i, it in enumerate(items):
        if it.input.shape != it.target.shape or it.input.ndim != 3:
            raise InputError(path, f"map {i}: input {it.input.shape} and target {it.target.shape} differ")
        arrays[f"input_{i:06d}"] = np.asarray(it.input, np.float32)
        arrays[f"target_{i:06d}"] = np.asarray(it.target, np.float32)
        if it.truth is not None:
            arrays[f"truth_{i:06d}"] = np.asarray(it.truth, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    from credgui._io import atomic_open, write_text_atomic

    with atomic_open(path) as fh:
        np.savez(
            fh, **arrays,
            resolution=np.array([it.resolution for it in items], np.float64),
            pixel_size=np.array(pixels, np.float64),
            meta=np.array(json.dumps({**full, "maps": rows})),
        )
    write_text_atomic(path.with_suffix(".json"), json.dumps({**full, "maps": rows}, indent=1))
    return path


@dataclass(frozen=True)
class IntermediateSet:
    """Map pairs at their own sampling: ``inputs[i]`` x~ (box_i^3), ``targets[i]`` x^,
    ``truths[i]`` the ground truth on x~'s scale (or None), ``pixel_size[i]`` A/px,
    ``resolution[i]`` nominal A; ``rows`` the per-map index (job, iteration, half, draws)."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    resolution: np.ndarray
    pixel_size: np.ndarray
    meta: dict
    truths: list[np.ndarray] | None = None
    rows: tuple[dict, ...] = ()

    def __len__(self) -> int:
        return len(self.inputs)

    def items(self) -> list[Intermediate]:
        """Back to items (to extend a set and save it again)."""
        rows = self.rows or tuple({} for _ in self.inputs)
        keep = {"job", "iteration", "half", "resolution", "scale", "pixel_size", "box"}
        return [
            Intermediate(str(r.get("job", "")), int(r.get("iteration", 0)), int(r.get("half", 0)),
                         float(self.resolution[i]), float(r.get("scale", 1.0)), self.inputs[i], self.targets[i],
                         self.truths[i] if self.truths is not None else None, float(self.pixel_size[i]),
                         {k: v for k, v in r.items() if k not in keep})
            for i, r in enumerate(rows)
        ]


def _load_one(path: Path, with_truths: bool = True) -> IntermediateSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") == SET_FORMAT_1:  # stacked maps at one voxel size
                inputs = list(z["inputs"].astype(np.float32, copy=False))
                targets = list(z["targets"].astype(np.float32, copy=False))
                truths = list(z["truths"].astype(np.float32)) if with_truths and "truths" in z.files else None
                res = z["resolution"].astype(np.float64)
                pix = np.full(len(inputs), float(z["voxel_size"]))
                rows = ()
            else:
                n = len(z["resolution"])
                inputs = [z[f"input_{i:06d}"] for i in range(n)]
                targets = [z[f"target_{i:06d}"] for i in range(n)]
                has_truth = with_truths and all(f"truth_{i:06d}" in z.files for i in range(n))
                truths = [z[f"truth_{i:06d}"] for i in range(n)] if has_truth else None
                res = z["resolution"].astype(np.float64)
                pix = z["pixel_size"].astype(np.float64)
                rows = tuple(meta.pop("maps", []))
    except FileNotFoundError:
        raise InputError(path, "intermediate set not found") from None
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            path, f"not a credgui intermediate set ({' '.join(str(exc).split())[:160]})"
        ) from None
    if meta.get("format") not in (SET_FORMAT, SET_FORMAT_1):
        raise InputError(path, f"not a credgui intermediate set (format {meta.get('format')!r})")
    return IntermediateSet(inputs, targets, res, pix, meta, truths, rows)


def load_intermediates(path: str | Path, with_truths: bool = True) -> IntermediateSet:
    """A set written by ``save_intermediates`` (format 1 or 2), or a folder of them (the shards
    of ``credgui train-data reconstruct``), as one set; InputError naming the file otherwise.
    ``with_truths`` False leaves the ground truths on disk (training needs only x~ and x^)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.npz"))
        if not shards:
            raise InputError(path, "no intermediate sets (*.npz) in this folder")
        sets = [_load_one(p, with_truths) for p in shards]
        have_truth = all(s.truths is not None for s in sets)
        return IntermediateSet(
            [a for s in sets for a in s.inputs], [a for s in sets for a in s.targets],
            np.concatenate([s.resolution for s in sets]), np.concatenate([s.pixel_size for s in sets]),
            {**sets[0].meta, "shards": [p.name for p in shards]},
            [a for s in sets for a in s.truths] if have_truth else None,
            tuple(r for s in sets for r in (s.rows or tuple({} for _ in s.inputs))),
        )
    return _load_one(path, with_truths)


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
    "fit_training_box",
    "network_pair",
    "run_refinements",
    "save_intermediates",
]
