"""Simulated data sets: atomic model -> ground truth -> CTF-modulated noisy projections -> RELION files.

Directory layout (docs/DEVELOPING.md): particles.star (RELION 3.1, no pose columns), particles.mrcs,
true_poses.star, ground_truth.mrc, initial_model.mrc (30 A low-pass), mask.mrc, manifest.json.

SNR as in Kimanius et al. (2021): the mean over images of the per-pixel variance of the noiseless,
CTF-modulated projections divided by the variance of the added white Gaussian noise. The noise
variance is 1 (images normalised as RELION expects); the map is scaled to reach the target SNR, and
ground_truth.mrc holds the scaled map, so ``relion_project`` of it with the true poses and CTFs
reproduces the noiseless images.

Pose columns use the exact values written (angles rounded to 1e-6 degrees, origins to 1e-6 A):
the images are computed from those rounded numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from credgui.errors import InputError
from credgui.metrics.filters import lowpass
from credgui.progress import Progress, eta_s

FORMAT_VERSION = 1

# Optics, fixed as in the paper's test data
VOLTAGE_KV = 300.0
CS_MM = 2.7
AMPLITUDE_CONTRAST = 0.1
INITIAL_LOWPASS = 30.0
"""Resolution (A) of initial_model.mrc, as the paper's refinements were started from."""
MASK_EXTEND = 4.0
MASK_SOFT_EDGE = 8.0
"""mask.mrc: the ground truth above 5 % of its maximum, grown by this many A, with a cosine edge this wide."""
PARTICLES_PER_MICROGRAPH = 100
"""rlnMicrographName groups (RELION 3.1 makes its noise groups from micrograph names)."""

# Limits that the library checks (InputError outside)
BOX_RANGE = (16, 512)
PIXEL_RANGE = (0.3, 14.0)
SNR_RANGE = (1e-5, 100.0)
DEFOCUS_RANGE_UM = (0.0, 20.0)
MAX_PARTICLES = 10_000_000

# Workstation defaults (the CLI's and simulate_dataset's)
DEFAULT_BOX = 64
DEFAULT_PIXEL_SIZE = 2.2
DEFAULT_PARTICLES = 1200
DEFAULT_SNR = 0.15
DEFAULT_DEFOCUS_UM = (0.2, 2.0)

_BATCH = 256


@dataclass(frozen=True)
class Manifest:
    """What a simulated data set is; ``manifest.json`` holds every field but ``directory``."""

    model: str
    """the atomic model file, resolved path"""
    model_sha256: str
    model_name: str
    seed: int
    box: int
    pixel_size: float
    n_particles: int
    snr_target: float
    snr_measured: float
    """mean per-image variance of the noiseless projections / variance of the noise drawn"""
    defocus_um: tuple[float, float]
    astigmatism_um: float
    max_offset_px: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    map_scale: float
    """factor applied to gemmi's potential (ground_truth.mrc includes it)"""
    signal_variance: float
    noise_variance: float
    initial_lowpass_angst: float
    n_atoms: int
    mass_kda: float
    max_radius_angst: float
    compactness: float
    b_factor_default: float | None
    particle_diameter_angst: float
    """suggested ``--particle_diameter`` for RELION (model diameter plus 10 A, rounded up to 10 A)"""
    seconds: float
    versions: dict = field(default_factory=dict, compare=False, hash=False)
    format_version: int = FORMAT_VERSION
    directory: Path | None = field(default=None, compare=False, hash=False)
    """where the data set is (set when written or loaded; not stored in manifest.json)"""

    # -- files ---------------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        if self.directory is None:
            raise ValueError("this Manifest has no directory")
        return Path(self.directory) / name

    @property
    def particles_star(self) -> Path:
        return self._file("particles.star")

    @property
    def particles_mrcs(self) -> Path:
        return self._file("particles.mrcs")

    @property
    def true_poses_star(self) -> Path:
        return self._file("true_poses.star")

    @property
    def ground_truth(self) -> Path:
        return self._file("ground_truth.mrc")

    @property
    def initial_model(self) -> Path:
        return self._file("initial_model.mrc")

    @property
    def mask(self) -> Path:
        return self._file("mask.mrc")

    @property
    def manifest_json(self) -> Path:
        return self._file("manifest.json")

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d.pop("directory")
        d["defocus_um"] = list(self.defocus_um)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, directory: Path | None = None, path: Path | None = None) -> Manifest:
        try:
            d = json.loads(text)
            names = {f.name for f in fields(cls)} - {"directory"}
            missing = names - set(d) - {"versions", "format_version"}
            if missing:
                raise InputError(path, f"manifest lacks {', '.join(sorted(missing))}")
            d = {k: v for k, v in d.items() if k in names}
            d["defocus_um"] = tuple(float(v) for v in d["defocus_um"])
            return cls(**d, directory=directory)
        except (ValueError, TypeError) as exc:
            raise InputError(path, f"not a credgui simulation manifest ({exc})") from None

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """The manifest of the data set in ``directory`` (InputError when missing or invalid)."""
        directory = Path(directory)
        path = directory / "manifest.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise InputError(path, "no manifest.json: not a credgui simulated data set") from None
        return cls.from_json(text, directory=directory, path=path)


# --- helpers ----------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_range(path, name: str, value: float, lo: float, hi: float, unit: str = "") -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        raise InputError(path, f"{name} {value!r}{unit} is out of range ({lo:g} to {hi:g}{unit})")


def validate_parameters(
    model: Path,
    *,
    box: int,
    pixel_size: float,
    n_particles: int,
    snr: float,
    defocus_um: tuple[float, float],
    astigmatism_um: float,
    max_offset_px: float,
) -> None:
    """InputError naming ``model`` for any parameter out of range (before anything is written)."""
    if isinstance(box, bool) or not isinstance(box, (int, np.integer)) or box % 2:
        raise InputError(model, f"box {box!r} must be an even number of pixels")
    _check_range(model, "box", box, *BOX_RANGE, " px")
    _check_range(model, "pixel size", pixel_size, *PIXEL_RANGE, " A")
    if not isinstance(n_particles, (int, np.integer)) or isinstance(n_particles, bool):
        raise InputError(model, f"particle count {n_particles!r} is not an integer")
    _check_range(model, "particle count", n_particles, 2, MAX_PARTICLES)
    _check_range(model, "SNR", snr, *SNR_RANGE)
    try:
        dmin, dmax = (float(v) for v in defocus_um)
    except (TypeError, ValueError):  # not iterable, not two values, not numbers
        raise InputError(model, f"defocus range {defocus_um!r} is not two numbers (um)") from None
    _check_range(model, "minimum defocus", dmin, *DEFOCUS_RANGE_UM, " um")
    _check_range(model, "maximum defocus", dmax, dmin, DEFOCUS_RANGE_UM[1], " um")
    _check_range(model, "astigmatism", astigmatism_um, 0.0, 2 * dmin if dmin > 0 else 0.0, " um")
    _check_range(model, "maximum offset", max_offset_px, 0.0, box / 8, " px")
    if 2 * pixel_size >= INITIAL_LOWPASS:
        raise InputError(model, f"pixel size {pixel_size} A: Nyquist is coarser than the 30 A initial model")


DATASET_FILES = frozenset({"particles.star", "particles.mrcs", "true_poses.star", "ground_truth.mrc",
                           "initial_model.mrc", "mask.mrc", "manifest.json"})
"""What a data set folder holds: ``--force`` replaces a folder only when it holds nothing else."""


def check_out_dir(out_dir: Path, force: bool) -> None:
    """InputError unless ``out_dir`` may become (or be replaced by) a data set: missing, empty,
    or, with ``force``, an earlier data set and nothing else (never the current directory or
    one that holds it: it is replaced by a rename)."""
    where = Path(os.path.abspath(out_dir))
    if where.exists() or where.is_symlink():
        if where.is_symlink() or not where.is_dir():
            raise InputError(out_dir, "exists and is not a directory")
        resolved, cwd = where.resolve(), Path.cwd().resolve()
        entries = sorted(p.name for p in where.iterdir())
        if resolved == cwd or resolved in cwd.parents:
            raise InputError(out_dir, "is the current directory (or holds it), which a data set would "
                                      "replace: choose a new folder, e.g. -o dataset")
        if entries and not force:
            raise InputError(out_dir, "exists and is not empty (use --force to replace it)")
        others = [name for name in entries if name not in DATASET_FILES and not name.startswith(".")]
        if others:
            shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
            raise InputError(out_dir, f"--force replaces only a credgui data set, and this folder also "
                                      f"holds {shown}: move them or choose another -o")


def _versions() -> dict:
    import gemmi

    import credgui

    return {
        "credgui": credgui.__version__,
        "numpy": np.__version__,
        "gemmi": gemmi.__version__,
        "python": platform.python_version(),
    }


def _f6(values) -> list[str]:
    return [f"{v:.6f}" for v in values]


# --- the simulation ------------------------------------------------------------------------------


def iter_simulate_dataset(
    model: str | Path,
    out_dir: str | Path,
    *,
    box: int = DEFAULT_BOX,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
    n_particles: int = DEFAULT_PARTICLES,
    snr: float = DEFAULT_SNR,
    defocus_um: tuple[float, float] = DEFAULT_DEFOCUS_UM,
    astigmatism_um: float = 0.0,
    max_offset_px: float = 0.0,
    seed: int = 0,
    force: bool = False,
) -> Iterator[Progress]:
    """Simulate a data set into ``out_dir``, yielding :class:`Progress`; returns the Manifest
    (``StopIteration.value``; also the last Progress's ``result``).

    The data set is built in a temporary directory beside ``out_dir`` and renamed into place at
    the end; on an error or when the generator is closed early nothing is left behind. An existing
    non-empty ``out_dir`` is replaced only with ``force``. Raises InputError (naming the model file,
    or ``out_dir``) for bad input, before anything is written.
    """
    import time

    from credgui.metrics.masks import soft_mask_from_map
    from credgui.relion.mrc import write_mrc_atomic
    from credgui.relion.star import format_star, write_star_atomic
    from credgui.simulate.model import model_to_map, model_stem
    from credgui.simulate.projection import (
        FourierProjector,
        ctf_rfft,
        euler_to_matrix,
        matrix_to_euler,
        random_rotations,
    )

    t0 = time.perf_counter()
    model = Path(model)
    out_dir = Path(os.path.abspath(out_dir))
    validate_parameters(
        model,
        box=box,
        pixel_size=pixel_size,
        n_particles=n_particles,
        snr=snr,
        defocus_um=defocus_um,
        astigmatism_um=astigmatism_um,
        max_offset_px=max_offset_px,
    )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(model, f"seed {seed!r} must be a non-negative integer")
    if not model.is_file():
        raise InputError(model, "atomic model file not found")
    check_out_dir(out_dir, force)
    box, n = int(box), int(n_particles)
    pixel_size, snr = float(pixel_size), float(snr)
    defocus_um = (float(defocus_um[0]), float(defocus_um[1]))

    # 1. ground truth (unscaled)
    yield Progress("simulate", "map", 0, 1, f"potential map of {model.name}")
    vol, info = model_to_map(model, box, pixel_size)
    yield Progress("simulate", "map", 1, 1, f"{info.n_atoms} atoms, {info.mass_kda:.1f} kDa")

    # 2. poses and CTFs, rounded to what the STAR files hold
    rng_pose, rng_noise = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    rot, tilt, psi = (np.round(a, 6) for a in matrix_to_euler(random_rotations(n, rng_pose)))
    mats = euler_to_matrix(rot, tilt, psi)
    dmean = np.round(rng_pose.uniform(defocus_um[0], defocus_um[1], n) * 1e4, 2)  # A
    du = np.round(dmean + astigmatism_um * 1e4 / 2, 2)
    dv = np.round(dmean - astigmatism_um * 1e4 / 2, 2)
    dang = np.round(rng_pose.uniform(0.0, 180.0, n), 6) if astigmatism_um > 0 else np.zeros(n)
    off_a = np.round(rng_pose.uniform(-max_offset_px, max_offset_px, (n, 2)) * pixel_size, 6)
    off_px = off_a / pixel_size

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=_make_parent(out_dir)))
    try:
        import mrcfile

        projector = FourierProjector(vol)
        stack_path = tmp / "particles.mrcs"
        with mrcfile.new_mmap(stack_path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size
            stack = mrc.data
            # 3. noiseless CTF-modulated projections
            var_sum = 0.0
            for start in range(0, n, _BATCH):
                sl = slice(start, min(n, start + _BATCH))
                ctf = ctf_rfft(box, pixel_size, du[sl], dv[sl], dang[sl], voltage_kv=VOLTAGE_KV,
                               cs_mm=CS_MM, amplitude_contrast=AMPLITUDE_CONTRAST)
                img = projector.project(mats[sl], off_px[sl], ctf)
                var_sum += float(img.var(axis=(1, 2)).sum())
                stack[sl] = img
                yield Progress("simulate", "project", sl.stop, n, "noiseless projections with CTF")
            signal_var = var_sum / n
            if not signal_var > 0:
                raise InputError(model, "the projections are empty (no density in the box?)")
            scale = math.sqrt(snr / signal_var)
            # 4. scale to the target SNR, add unit-variance white noise
            noise_sq, noise_sum, sig_sum = 0.0, 0.0, 0.0
            for start in range(0, n, _BATCH):
                sl = slice(start, min(n, start + _BATCH))
                sig = stack[sl].astype(np.float64) * scale
                noise = rng_noise.standard_normal(sig.shape)
                sig_sum += float(sig.var(axis=(1, 2)).sum())
                noise_sum += float(noise.sum())
                noise_sq += float((noise * noise).sum())
                stack[sl] = (sig + noise).astype(np.float32)
                yield Progress("simulate", "noise", sl.stop, n, f"scaled to SNR {snr:g}, noise added")
            count = n * box * box
            noise_var = noise_sq / count - (noise_sum / count) ** 2
            snr_measured = (sig_sum / n) / noise_var
            mrc.update_header_stats()

        # 5. maps and metadata
        yield Progress("simulate", "write", 0, 1, "maps and STAR files")
        truth = (vol.astype(np.float64) * scale).astype(np.float32)
        write_mrc_atomic(tmp / "ground_truth.mrc", truth, pixel_size)
        write_mrc_atomic(tmp / "initial_model.mrc", lowpass(truth, pixel_size, INITIAL_LOWPASS), pixel_size)
        mask = soft_mask_from_map(truth, pixel_size, extend_px=max(1.0, round(MASK_EXTEND / pixel_size)),
                                  soft_edge_px=max(2.0, round(MASK_SOFT_EDGE / pixel_size)))
        write_mrc_atomic(tmp / "mask.mrc", mask, pixel_size)

        names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
        mics = [f"mic{i // PARTICLES_PER_MICROGRAPH + 1:05d}.mrc" for i in range(n)]
        optics = {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [AMPLITUDE_CONTRAST],
            "rlnSphericalAberration": [CS_MM],
            "rlnVoltage": [VOLTAGE_KV],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
        particles = {
            "rlnImageName": names,
            "rlnMicrographName": mics,
            "rlnOpticsGroup": [1] * n,
            "rlnDefocusU": [f"{v:.2f}" for v in du],
            "rlnDefocusV": [f"{v:.2f}" for v in dv],
            "rlnDefocusAngle": _f6(dang),
            "rlnCtfBfactor": ["0.000000"] * n,
            "rlnCtfScalefactor": ["1.000000"] * n,
            "rlnPhaseShift": ["0.000000"] * n,
        }
        write_star_atomic(
            tmp / "particles.star",
            format_star({"optics": optics, "particles": particles}, loops={"optics", "particles"}, version=True),
        )
        poses = {
            "rlnImageName": names,
            "rlnAngleRot": _f6(rot),
            "rlnAngleTilt": _f6(tilt),
            "rlnAnglePsi": _f6(psi),
            "rlnOriginXAngst": _f6(off_a[:, 0]),
            "rlnOriginYAngst": _f6(off_a[:, 1]),
        }
        write_star_atomic(tmp / "true_poses.star", format_star({"particles": poses}, loops={"particles"}, version=True))

        manifest = Manifest(
            model=str(model.resolve()),
            model_sha256=file_sha256(model),
            model_name=model_stem(model),
            seed=int(seed),
            box=box,
            pixel_size=pixel_size,
            n_particles=n,
            snr_target=snr,
            snr_measured=float(snr_measured),
            defocus_um=(float(defocus_um[0]), float(defocus_um[1])),
            astigmatism_um=float(astigmatism_um),
            max_offset_px=float(max_offset_px),
            voltage_kv=VOLTAGE_KV,
            cs_mm=CS_MM,
            amplitude_contrast=AMPLITUDE_CONTRAST,
            map_scale=float(scale),
            signal_variance=float(sig_sum / n),
            noise_variance=float(noise_var),
            initial_lowpass_angst=INITIAL_LOWPASS,
            n_atoms=info.n_atoms,
            mass_kda=round(info.mass_kda, 3),
            max_radius_angst=round(info.max_radius, 3),
            compactness=round(info.compactness, 4),
            b_factor_default=info.b_factor_default,
            particle_diameter_angst=float(min(math.ceil((2 * info.max_radius + 10) / 10) * 10,
                                              math.floor(box * pixel_size))),
            seconds=round(time.perf_counter() - t0, 3),
            versions=_versions(),
        )
        (tmp / "manifest.json").write_text(manifest.to_json())
        yield Progress("simulate", "write", 1, 1, "maps, STAR files and manifest written")
        _replace_dir(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = dataclasses.replace(manifest, directory=out_dir)
    yield Progress("simulate", "done", 1, 1, f"wrote {out_dir}", result=manifest)
    return manifest


def _make_parent(out_dir: Path) -> Path:
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _replace_dir(tmp: Path, out_dir: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` (checked before) is moved aside first."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if out_dir.exists():
        check_out_dir(out_dir, force)  # again: it may have changed while we simulated
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            os.rename(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def simulate_dataset(
    model: str | Path,
    out_dir: str | Path,
    *,
    box: int = DEFAULT_BOX,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
    n_particles: int = DEFAULT_PARTICLES,
    snr: float = DEFAULT_SNR,
    defocus_um: tuple[float, float] = DEFAULT_DEFOCUS_UM,
    astigmatism_um: float = 0.0,
    max_offset_px: float = 0.0,
    seed: int = 0,
    force: bool = False,
) -> Manifest:
    """Simulate a data set into ``out_dir`` (see :func:`iter_simulate_dataset`) and return its Manifest."""
    gen = iter_simulate_dataset(
        model, out_dir, box=box, pixel_size=pixel_size, n_particles=n_particles, snr=snr,
        defocus_um=defocus_um, astigmatism_um=astigmatism_um, max_offset_px=max_offset_px,
        seed=seed, force=force,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# --- training sets: several models and SNRs ---------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One data set of a batch: model x SNR -> directory (with its own seed)."""

    model: Path
    snr: float
    out_dir: Path
    seed: int


def plan_batch(models: Sequence[str | Path], out_dir: str | Path, snrs: Sequence[float], seed: int = 0) -> list[Job]:
    """Expand models (files or folders) x SNRs into jobs. A single model and SNR writes into
    ``out_dir`` itself; otherwise each combination goes to ``out_dir/<model-stem>_snr<S>/``, with
    seed ``seed + k`` for the k-th combination."""
    from credgui.simulate.model import find_models, model_stem

    files: list[Path] = []
    for m in models:
        files += find_models(m)
    out_dir = Path(out_dir)
    if len(files) == 1 and len(snrs) == 1:
        return [Job(files[0], float(snrs[0]), out_dir, int(seed))]
    stems = [model_stem(f) for f in files]
    dupes = {s for s in stems if stems.count(s) > 1}
    if dupes:
        raise InputError(files[stems.index(sorted(dupes)[0])], "two models share this file name stem")
    jobs = []
    for i, f in enumerate(files):
        for j, s in enumerate(snrs):
            k = i * len(snrs) + j
            jobs.append(Job(f, float(s), out_dir / f"{model_stem(f)}_snr{float(s):g}", int(seed) + k))
    return jobs


def _run_job(job: Job, kwargs: dict) -> tuple[Job, Manifest | None, str | None]:
    try:
        return job, simulate_dataset(job.model, job.out_dir, snr=job.snr, seed=job.seed, **kwargs), None
    except InputError as exc:
        return job, None, str(exc)


def iter_simulate_batch(jobs: Sequence[Job], *, n_jobs: int = 1, **kwargs) -> Iterator[Progress]:
    """Run jobs (``n_jobs`` processes in parallel), yielding a ``Progress`` (stage "dataset",
    ``item`` the output directory, ``result`` ``(job, manifest or None, error or None)``) as each
    finishes. An InputError in one job (a bad model) does not stop the others."""
    t0 = time.monotonic()

    def step(k: int, outcome: tuple[Job, Manifest | None, str | None]) -> Progress:
        job, manifest, error = outcome
        message = f"skipped: {error}" if error is not None else (
            f"SNR {manifest.snr_measured:.4g}, {manifest.seconds:.1f} s" if manifest is not None else "")
        elapsed = time.monotonic() - t0
        return Progress("simulate", "dataset", k, len(jobs), message, item=str(job.out_dir), elapsed_s=elapsed,
                        eta_s=eta_s(k, len(jobs), elapsed), result=outcome)

    if n_jobs <= 1 or len(jobs) <= 1:
        for k, job in enumerate(jobs, start=1):
            yield step(k, _run_job(job, kwargs))
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=n_jobs) as pool:
        futures = [pool.submit(_run_job, job, kwargs) for job in jobs]
        for k, fut in enumerate(as_completed(futures), start=1):
            yield step(k, fut.result())
