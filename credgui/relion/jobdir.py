"""RELION 3.1 refinement job directories: iterations, model/optimiser STAR files, hook records.

What RELION 3.1.3 writes for ``--o JOB/run`` in a 3D auto-refinement (src/ml_optimiser.cpp
``MlOptimiser::write``, src/ml_optimiser_mpi.cpp ``iterate``), per iteration NNN:
``run_itNNN_optimiser.star`` (rank 1, written first), ``run_itNNN_half{1,2}_model.star`` and
``run_itNNN_half{1,2}_class001.mrc`` (ranks 1 and 2 at the same time), ``run_itNNN_sampling.star``
and ``run_itNNN_data.star`` (leader). A continuation (``--continue ... --o JOB/run_ctNNN``) writes
under the root ``run_ctNNN``. After convergence the joined last iteration writes
``run_model.star``, ``run_class001.mrc``, ``run_half{1,2}_class001_unfil.mrc`` and no optimiser.
With ``--pipeline_control JOB/`` RELION touches ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` /
``_ABORTED`` in JOB when it exits.

Because the optimiser STAR is NOT the last file of an iteration, an iteration counts as complete
only when every file of it is whole: STAR files parse and hold their last block/label, MRC files
have the size their header announces, and all of them are settled (a later iteration exists, the
job is no longer running, or they have not changed for ``SETTLE_S``). Everything here is cheap and
never raises on half-written files: parse results are cached by (path, size, mtime).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from credgui.errors import InputError
from credgui.relion.star import Block, get_block, parse_star

log = logging.getLogger(__name__)

__all__ = [
    "HookRecord",
    "Iteration",
    "OptimiserInfo",
    "ModelInfo",
    "SETTLE_S",
    "find_iterations",
    "read_model_star",
    "read_optimiser_star",
    "read_hook_records",
    "read_optics",
    "first_image_stack",
    "is_relion_job_dir",
    "mrc_is_whole",
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "EXIT_ABORTED",
    "HOOK_LOG",
]

SETTLE_S = 2.0
"""Files unchanged for this long (s) count as fully written even while RELION runs."""

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
HOOK_LOG = "credgui_hook.jsonl"

_OPTIMISER_RE = re.compile(r"^(?P<root>.+)_it(?P<it>\d{3,})_optimiser\.star$")
_FINAL_MODEL_RE = re.compile(r"^(?P<root>.+)_model\.star$")
_LAST_OPTIMISER_LABEL = "rlnMaxNumberOfPooledParticles"
"""The last label RELION 3.1 writes in data_optimiser_general: its presence means the file is whole."""


# --------------------------------------------------------------------------------------------
# small value types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookRecord:
    """One line of ``credgui_hook.jsonl`` (one call of ``credgui-reconstruct``; DEVELOPING.md).

    ``half`` is None for the joined final call. ``lambda_`` is the CW-RED weight used (eq. 17).
    ``raw`` keeps every field of the line as written.
    """

    time: str
    root: str
    iteration: int | None
    half: int | None
    status: str
    error: str | None
    nominal_resolution: float | None
    lambda_: float | None
    denoiser: str | None
    worker: bool | None
    timings: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    offset: int = 0
    """byte offset of the line in credgui_hook.jsonl"""


@dataclass(frozen=True)
class ModelInfo:
    """What credgui reads from a ``*_model.star``.

    ``fsc`` is float64 (n, 3): spectral index, resolution (A; shell 0 is inf), gold-standard FSC
    (``data_model_class_1``: ``_rlnSpectralIndex``, ``_rlnAngstromResolution``,
    ``_rlnGoldStandardFsc``), shells 0..ori_size//2.
    """

    path: Path
    resolution: float
    """A, ``_rlnCurrentResolution``"""
    pixel_size: float
    ori_size: int
    current_size: int
    fsc: np.ndarray = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class OptimiserInfo:
    """What credgui reads from a ``*_optimiser.star``."""

    path: Path
    output_root: str
    iteration: int
    nr_iterations: int
    do_external_reconstruct: bool
    adaptive_oversampling: int
    auto_local_healpix_order: int | None
    has_converged: bool
    nr_iter_wo_resol_gain: int | None
    model_stars: tuple[str, ...]
    sampling_star: str | None
    data_star: str | None
    command_line: str
    """the relion_refine arguments RELION wrote as the file's first comment line"""


@dataclass(frozen=True)
class Iteration:
    """One complete RELION iteration of a refinement job (all paths absolute).

    ``half_maps``: RELION's ``run_itNNN_half{1,2}_class001.mrc`` (the regularised maps after the
    M-step, i.e. what the hook returned, then solvent-flattened by RELION); for the final joined
    iteration (``final``) the unfiltered ``run_half{1,2}_class001_unfil.mrc`` and ``map`` is
    ``run_class001.mrc``. ``unreg_maps`` / ``denoised_maps``: the hook's
    ``ROOT_credgui_unreg.mrc`` / ``ROOT_credgui_denoised.mrc`` per half (one entry, the joined
    call, when ``final``), None where absent. ``fsc``: (n, 3) float64, spectral index,
    resolution (A), gold-standard FSC from the half-1 model star. ``angular_sampling``: RELION's
    angular step in degrees, 360 / (6 * 2^(healpix order + oversampling order)).
    ``time``: modification time (epoch s) of the iteration's last file.
    """

    number: int
    root: str
    final: bool
    optimiser_star: Path | None
    model_star: Path
    model_stars: tuple[Path, ...]
    sampling_star: Path | None
    data_star: Path | None
    half_maps: tuple[Path, ...]
    map: Path | None
    unreg_maps: tuple[Path | None, ...]
    denoised_maps: tuple[Path | None, ...]
    resolution: float
    pixel_size: float
    box: int
    current_size: int
    angular_sampling: float | None
    healpix_order: int | None
    time: float
    hook_records: tuple[HookRecord, ...] = ()
    fsc: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), compare=False, hash=False, repr=False)

    @property
    def hook_errors(self) -> tuple[HookRecord, ...]:
        return tuple(r for r in self.hook_records if r.status != "ok")


# --------------------------------------------------------------------------------------------
# file checks
# --------------------------------------------------------------------------------------------

_MRC_MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 0.5}


def mrc_is_whole(path: str | Path) -> bool:
    """True when ``path`` is an MRC file at least as long as its header announces
    (1024 + extended header + nx*ny*nz*bytes); False when missing, short or not MRC."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(1024)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    if len(header) < 1024 or header[208:212] != b"MAP ":
        return False
    fmt = ">" if header[212] == 0x11 else "<"  # machine stamp: 0x11 big-endian, else little
    nx, ny, nz, mode = struct.unpack(fmt + "4i", header[:16])
    (nsymbt,) = struct.unpack(fmt + "i", header[92:96])
    if mode not in _MRC_MODE_BYTES or min(nx, ny, nz) <= 0 or nsymbt < 0:
        return False
    need = 1024 + nsymbt + math.ceil(nx * ny * nz * _MRC_MODE_BYTES[mode])
    return size >= need


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


# parse cache: (path, size, mtime_ns) -> parsed value (or the InputError raised)
_CACHE: dict[tuple[str, int, int], Any] = {}
_CACHE_MAX = 4096


def _cached(path: Path, parse):
    """``parse(path)``, remembered while the file's size and mtime stay the same (InputErrors
    are remembered too: a half-written file is parsed once per change, not at every poll)."""
    st = _stat(path)
    if st is None:
        raise InputError(path, "file not found")
    key = (f"{parse.__name__}:{path}", st.st_size, st.st_mtime_ns)
    value = _CACHE.get(key)
    if value is None:
        try:
            value = parse(path)
        except InputError as exc:
            value = exc
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = value
    if isinstance(value, InputError):
        raise value
    return value


# --------------------------------------------------------------------------------------------
# STAR readers
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None


def _scalar(block: Block, label: str, path: Path, kind=float, default=None):
    values = block.get(label)
    if not values:
        if default is not None:
            return default
        raise InputError(path, f"missing label _{label}")
    try:
        return kind(float(values[0])) if kind is int else kind(values[0])
    except ValueError:
        raise InputError(path, f"_{label} = {values[0]!r} is not a {kind.__name__}") from None


def _parse_model_star(path: Path) -> ModelInfo:
    text = _read_text(path)
    blocks = parse_star(text, path)
    general = get_block(blocks, "model_general", path)
    if not any(name.startswith("model_pdf_orient_class") for name in blocks):
        # RELION writes the orientational pdf blocks last: without them the file is cut short
        raise InputError(path, "incomplete model STAR (no data_model_pdf_orient_class_1 block yet)")
    ori = _scalar(general, "rlnOriginalImageSize", path, int)
    cls = get_block(blocks, "model_class_1", path)
    try:
        idx = np.array(cls["rlnSpectralIndex"], dtype=np.float64)
        res = np.array(cls["rlnAngstromResolution"], dtype=np.float64)
        gold = np.array(cls["rlnGoldStandardFsc"], dtype=np.float64)
    except KeyError as exc:
        raise InputError(path, f"data_model_class_1 has no _{exc.args[0]} column") from None
    except ValueError:
        raise InputError(path, "data_model_class_1 holds a non-numeric FSC value") from None
    if idx.size != ori // 2 + 1:
        raise InputError(path, f"FSC table has {idx.size} shells, expected {ori // 2 + 1}")
    res = np.where(idx > 0, res, np.inf)
    table = np.stack([idx, res, gold], axis=1)
    table.setflags(write=False)
    return ModelInfo(
        path=path,
        resolution=_scalar(general, "rlnCurrentResolution", path, float),
        pixel_size=_scalar(general, "rlnPixelSize", path, float),
        ori_size=ori,
        current_size=_scalar(general, "rlnCurrentImageSize", path, int),
        fsc=table,
    )


def read_model_star(path: str | Path) -> ModelInfo:
    """Resolution, pixel size, sizes and the gold-standard FSC of a RELION 3.1 ``*_model.star``.

    Raises InputError naming the file when it is missing, malformed or not yet whole.
    """
    return _cached(Path(path), _parse_model_star)


def _parse_optimiser_star(path: Path) -> OptimiserInfo:
    text = _read_text(path)
    blocks = parse_star(text, path)
    general = get_block(blocks, "optimiser_general", path)
    if _LAST_OPTIMISER_LABEL not in general:
        raise InputError(path, f"incomplete optimiser STAR (no _{_LAST_OPTIMISER_LABEL} yet)")
    command = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("# --") or s.startswith("#--"):
            command = s.lstrip("#").strip()
            break
    models = tuple(
        general[k][0] for k in ("rlnModelStarFile", "rlnModelStarFile2") if general.get(k)
    )

    def opt_int(label):
        v = general.get(label)
        try:
            return int(float(v[0])) if v else None
        except ValueError:
            return None

    return OptimiserInfo(
        path=path,
        output_root=_scalar(general, "rlnOutputRootName", path, str),
        iteration=_scalar(general, "rlnCurrentIteration", path, int),
        nr_iterations=_scalar(general, "rlnNumberOfIterations", path, int),
        do_external_reconstruct=bool(opt_int("rlnDoExternalReconstruct") or 0),
        adaptive_oversampling=opt_int("rlnAdaptiveOversampleOrder") or 0,
        auto_local_healpix_order=opt_int("rlnAutoLocalSearchesHealpixOrder"),
        has_converged=bool(opt_int("rlnHasConverged") or 0),
        nr_iter_wo_resol_gain=opt_int("rlnNumberOfIterWithoutResolutionGain"),
        model_stars=models,
        sampling_star=(general.get("rlnOrientSamplingStarFile") or [None])[0],
        data_star=(general.get("rlnDataStarFile") or [None])[0],
        command_line=command,
    )


def read_optimiser_star(path: str | Path) -> OptimiserInfo:
    """The fields credgui needs from a RELION 3.1 ``*_optimiser.star`` (InputError if not whole)."""
    return _cached(Path(path), _parse_optimiser_star)


def _parse_healpix_order(path: Path) -> int:
    blocks = parse_star(_read_text(path), path)
    general = get_block(blocks, "sampling_general", path)
    if "sampling_directions" not in blocks and not any("direction" in b for b in blocks):
        raise InputError(path, "incomplete sampling STAR (no data_sampling_directions yet)")
    return _scalar(general, "rlnHealpixOrder", path, int)


def _healpix_order(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return _cached(path, _parse_healpix_order)
    except InputError:
        return None


def read_optics(particles_star: str | Path) -> tuple[float, int]:
    """(pixel size in A, box in pixels) of the first optics group of a RELION 3.1 particles STAR.

    Only the file's head is parsed (particle tables can be large). InputError when the file is
    missing or has no ``data_optics`` block (RELION 3.0 format).
    """
    path = Path(particles_star)
    head = _read_head_blocks(path, stop_at="particles")
    if "optics" not in head:
        raise InputError(
            path,
            "no data_optics block: a RELION 3.1 particles STAR is needed "
            "(convert a RELION 3.0 file with relion_convert_star)",
        )
    optics = head["optics"]
    pixel = optics.get("rlnImagePixelSize")
    size = optics.get("rlnImageSize")
    if not pixel or not size:
        raise InputError(path, "data_optics lacks _rlnImagePixelSize or _rlnImageSize")
    try:
        return float(pixel[0]), int(float(size[0]))
    except ValueError:
        raise InputError(path, "data_optics holds a non-numeric pixel or image size") from None


def first_image_stack(particles_star: str | Path) -> str | None:
    """The stack file named by the first particle's ``_rlnImageName`` (``000001@stack.mrcs`` ->
    ``stack.mrcs``), as written (RELION resolves it against its working directory)."""
    path = Path(particles_star)
    try:
        with open(path) as fh:
            lines: list[str] = []
            in_particles = False
            labels: list[str] = []
            for raw in fh:
                line = raw.strip()
                if line.startswith("data_"):
                    in_particles = line[5:] in ("particles", "")
                    labels = []
                    continue
                if not in_particles or not line or line.startswith("#") or line.startswith("loop_"):
                    continue
                if line.startswith("_"):
                    labels.append(line[1:].split()[0])
                    continue
                lines.append(line)
                break
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    if not lines or "rlnImageName" not in labels:
        return None
    values = lines[0].split()
    i = labels.index("rlnImageName")
    if i >= len(values):
        return None
    name = values[i]
    return name.split("@", 1)[1] if "@" in name else name


def _read_head_blocks(path: Path, stop_at: str) -> dict[str, Block]:
    """Parse the blocks before ``data_<stop_at>`` (cheap for large particle files)."""
    try:
        with open(path) as fh:
            text_lines = []
            for line in fh:
                if line.strip() == f"data_{stop_at}":
                    break
                text_lines.append(line)
    except FileNotFoundError:
        raise InputError(path, "STAR file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read STAR file ({exc})") from None
    text = "".join(text_lines)
    if "data_" not in text:
        return {}
    return parse_star(text, path)


# --------------------------------------------------------------------------------------------
# hook records
# --------------------------------------------------------------------------------------------


def _opt_float(v) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _opt_int(v) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


_WARNED: set[tuple[str, int]] = set()


def read_hook_records(job_dir: str | Path, start_offset: int = 0) -> tuple[HookRecord, ...]:
    """Parse ``credgui_hook.jsonl`` from byte ``start_offset`` on; a partly written last line
    and malformed lines are skipped with a logged warning, once per line (never raises)."""
    path = Path(job_dir) / HOOK_LOG
    try:
        with open(path, "rb") as fh:
            fh.seek(start_offset)
            data = fh.read()
    except OSError:
        return ()
    out: list[HookRecord] = []
    lines = data.split(b"\n")
    if lines and not data.endswith(b"\n"):
        lines = lines[:-1]  # the last line is still being written
    pos = start_offset
    for raw in lines:
        line_start = pos
        pos += len(raw) + 1
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            key = (str(path), line_start)
            if key not in _WARNED:
                _WARNED.add(key)
                log.warning("%s: skipped a torn or malformed line at byte %d: %.60r", path, line_start, raw)
            continue
        timings = obj.get("timings") if isinstance(obj.get("timings"), dict) else {}
        error = obj.get("error")
        out.append(
            HookRecord(
                time=str(obj.get("time", "")),
                root=str(obj.get("root", "")),
                iteration=_opt_int(obj.get("iteration")),
                half=_opt_int(obj.get("half")),
                status=str(obj.get("status", "ok")),
                error=None if error is None else " ".join(str(error).split()),
                nominal_resolution=_opt_float(obj.get("nominal_resolution")),
                lambda_=_opt_float(obj.get("lambda")),
                denoiser=None if obj.get("denoiser") is None else str(obj.get("denoiser")),
                worker=None if obj.get("worker") is None else bool(obj.get("worker")),
                timings={k: float(v) for k, v in timings.items() if _opt_float(v) is not None},
                raw=obj,
                offset=line_start,
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# job directories and iterations
# --------------------------------------------------------------------------------------------

_JOB_MARKERS = ("credgui_job.json", "run.out", "run.err", "note.txt", "job.star", "run_submit.script")


def is_relion_job_dir(job_dir: str | Path) -> bool:
    """A directory that holds a RELION job: credgui's job file, RELION's run.out/run.err/note.txt,
    or any ``*_optimiser.star`` / ``*_model.star``."""
    d = Path(job_dir)
    try:
        names = os.listdir(d)
    except OSError:
        return False
    if any(m in names for m in _JOB_MARKERS):
        return True
    return any(n.endswith("_optimiser.star") or n.endswith("_model.star") for n in names)


def _resolve(job_dir: Path, project_dir: Path | None, name: str | None) -> Path | None:
    """A path RELION wrote (relative to its working directory) as an absolute path."""
    if not name:
        return None
    p = Path(name)
    if p.is_absolute():
        return p
    if project_dir is not None and (project_dir / p).exists():
        return project_dir / p
    return job_dir / p.name


def _settled(paths: list[Path], now: float, settle_s: float) -> bool:
    for p in paths:
        st = _stat(p)
        if st is None or now - st.st_mtime < settle_s:
            return False
    return True


def _angular_step(order: int | None, oversampling: int) -> float | None:
    if order is None:
        return None
    return 360.0 / (6 * 2 ** (order + oversampling))


def _hook_paths(job_dir: Path, root: str) -> tuple[Path | None, Path | None]:
    unreg = job_dir / f"{root}_credgui_unreg.mrc"
    den = job_dir / f"{root}_credgui_denoised.mrc"
    return (unreg if mrc_is_whole(unreg) else None, den if mrc_is_whole(den) else None)


def find_iterations(
    job_dir: str | Path,
    *,
    project_dir: str | Path | None = None,
    running: bool = True,
    hook_records: tuple[HookRecord, ...] | None = None,
    settle_s: float = SETTLE_S,
    problems: list[str] | None = None,
) -> tuple[Iteration, ...]:
    """The complete iterations in ``job_dir``, sorted by number (the final joined one last).

    ``running``: whether RELION may still be writing (then the newest iteration's files must
    have settled for ``settle_s`` seconds). ``project_dir``: RELION's working directory, to
    resolve the relative paths inside STAR files (default: two levels up for ``Type/jobNNN``).
    ``hook_records``: the parsed ``credgui_hook.jsonl`` (default: read here).
    Incomplete or unreadable iterations are left out; if ``problems`` is given, a one-line
    reason for each is appended. Never raises for file contents.
    """
    job = Path(job_dir)
    proj = Path(project_dir) if project_dir is not None else _default_project_dir(job)
    try:
        names = os.listdir(job)
    except OSError as exc:
        raise InputError(job, f"cannot list job directory ({exc.strerror})") from None
    now = time.time()
    name_set = set(names)
    candidates: dict[int, tuple[str, Path]] = {}
    for n in names:
        m = _OPTIMISER_RE.match(n)
        if not m:
            continue
        it = int(m["it"])
        path = job / n
        prev = candidates.get(it)
        if prev is None or (_stat(path) and _stat(prev[1]) and _stat(path).st_mtime > _stat(prev[1]).st_mtime):
            candidates[it] = (m["root"], path)
    if hook_records is None:
        hook_records = read_hook_records(job)
    by_iter: dict[int, list[HookRecord]] = {}
    for r in hook_records:
        if r.iteration is not None:
            by_iter.setdefault(r.iteration, []).append(r)

    numbers = sorted(candidates)
    # RELION writes iteration N's files before it calls the hook for iteration N+1, so a hook
    # record of a later iteration proves them whole (a hook that fails at once must not hide them)
    latest_hook_iteration = max(by_iter, default=-1)
    out: list[Iteration] = []
    for k, it in enumerate(numbers):
        root, opt_path = candidates[it]
        newer_exists = k + 1 < len(numbers) or latest_hook_iteration > it
        try:
            iteration = _read_iteration(job, proj, root, it, opt_path, name_set, by_iter.get(it, []))
        except InputError as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        files = [p for p in (iteration.optimiser_star, *iteration.model_stars, iteration.sampling_star,
                             iteration.data_star, *iteration.half_maps) if p is not None]
        if running and not newer_exists and not _settled(files, now, settle_s):
            if problems is not None:
                problems.append(f"{opt_path}: iteration {it} is still being written")
            continue
        out.append(iteration)

    final = _read_final(job, proj, candidates, name_set, by_iter, running, now, settle_s, problems)
    if final is not None:
        out.append(final)
    return tuple(out)


def _default_project_dir(job: Path) -> Path:
    job = job.resolve() if not job.is_absolute() else job
    if re.fullmatch(r"job\d+", job.name):
        return job.parent.parent
    return job.parent


def _read_iteration(
    job: Path, proj: Path, root: str, it: int, opt_path: Path, names: set[str], records: list[HookRecord]
) -> Iteration:
    opt = read_optimiser_star(opt_path)
    stem = f"{root}_it{it:03d}"
    models = [job / f"{stem}_half1_model.star", job / f"{stem}_half2_model.star"]
    models = [m for m in models if m.name in names]
    if not models:
        raise InputError(job / f"{stem}_half1_model.star", "model STAR not written yet")
    infos = [read_model_star(m) for m in models]
    half_maps = tuple(job / f"{stem}_half{h}_class001.mrc" for h in (1, 2)[: len(models)])
    for hm in half_maps:
        if not mrc_is_whole(hm):
            raise InputError(hm, "half map missing or not completely written")
    sampling = job / f"{stem}_sampling.star"
    sampling_path = sampling if sampling.name in names else None
    order = _healpix_order(sampling_path)
    if sampling_path is not None and order is None:
        raise InputError(sampling, "sampling STAR not completely written")
    data = job / f"{stem}_data.star"
    hook_pairs = [_hook_paths(job, f"{stem}_half{h}_class001") for h in (1, 2)[: len(models)]]
    stats = [_stat(p) for p in (opt_path, *models, *half_maps)]
    info = infos[0]
    return Iteration(
        number=it,
        root=root,
        final=False,
        optimiser_star=opt_path,
        model_star=models[0],
        model_stars=tuple(models),
        sampling_star=sampling_path,
        data_star=data if data.name in names else None,
        half_maps=half_maps,
        map=None,
        unreg_maps=tuple(p[0] for p in hook_pairs),
        denoised_maps=tuple(p[1] for p in hook_pairs),
        resolution=info.resolution,
        pixel_size=info.pixel_size,
        box=info.ori_size,
        current_size=info.current_size,
        angular_sampling=_angular_step(order, opt.adaptive_oversampling),
        healpix_order=order,
        time=max(s.st_mtime for s in stats if s is not None),
        hook_records=tuple(r for r in records if r.half is not None),
        fsc=info.fsc,
    )


def _read_final(job, proj, candidates, names, by_iter, running, now, settle_s, problems) -> Iteration | None:
    """The joined last iteration (``ROOT_model.star`` + ``ROOT_class001.mrc``), if whole."""
    roots = [c[0] for _, c in sorted(candidates.items())]
    root = roots[-1] if roots else None
    if root is None:
        for n in names:
            m = _FINAL_MODEL_RE.match(n)
            if m and "_it" not in m["root"] and "_half" not in m["root"]:
                root = m["root"]
                break
    if root is None:
        return None
    model = job / f"{root}_model.star"
    cmap = job / f"{root}_class001.mrc"
    if model.name not in names or cmap.name not in names:
        return None
    try:
        info = read_model_star(model)
        if not mrc_is_whole(cmap):
            raise InputError(cmap, "final map not completely written")
    except InputError as exc:
        if problems is not None:
            problems.append(str(exc))
        return None
    unfil = tuple(job / f"{root}_half{h}_class001_unfil.mrc" for h in (1, 2))
    files = [model, cmap, *[u for u in unfil if u.name in names]]
    if running and not _settled(files, now, settle_s):
        if problems is not None:
            problems.append(f"{model}: final iteration is still being written")
        return None
    number = (max(candidates) + 1) if candidates else 0
    sampling = job / f"{root}_sampling.star"
    sampling_path = sampling if sampling.name in names else None
    order = _healpix_order(sampling_path)
    oversampling = 0
    if candidates:
        try:
            oversampling = read_optimiser_star(candidates[max(candidates)][1]).adaptive_oversampling
        except InputError:
            pass
    unreg, den = _hook_paths(job, f"{root}_it{number:03d}_class001")
    data = job / f"{root}_data.star"
    return Iteration(
        number=number,
        root=root,
        final=True,
        optimiser_star=None,
        model_star=model,
        model_stars=(model,),
        sampling_star=sampling_path,
        data_star=data if data.name in names else None,
        half_maps=tuple(u for u in unfil if mrc_is_whole(u)),
        map=cmap,
        unreg_maps=(unreg,),
        denoised_maps=(den,),
        resolution=info.resolution,
        pixel_size=info.pixel_size,
        box=info.ori_size,
        current_size=info.current_size,
        angular_sampling=_angular_step(order, oversampling),
        healpix_order=order,
        time=max((_stat(p).st_mtime for p in files if _stat(p) is not None), default=now),
        hook_records=tuple(r for r in by_iter.get(number, []) if r.half is None),
        fsc=info.fsc,
    )
