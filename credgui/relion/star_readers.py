"""Readers of the STAR files a RELION 3.1 refinement writes and reads (model, optimiser,
sampling; the particles' optics and first stack), cheap enough to poll: each parse is cached
by (path, size, mtime) and a file not yet whole is an InputError, never a crash."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from credgui.errors import InputError
from credgui.relion.star import Block, get_block, parse_star

__all__ = [
    "ModelInfo",
    "OptimiserInfo",
    "file_stat",
    "first_image_stack",
    "read_healpix_order",
    "read_model_star",
    "read_optics",
    "read_optimiser_star",
]

_LAST_OPTIMISER_LABEL = "rlnMaxNumberOfPooledParticles"
"""The last label RELION 3.1 writes in data_optimiser_general: its presence means the file is whole."""


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



def file_stat(path: Path) -> os.stat_result | None:
    """``path.stat()``, None when it is gone (files come and go while RELION writes)."""
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
    st = file_stat(path)
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


def read_healpix_order(path: Path | None) -> int | None:
    """``_rlnHealpixOrder`` of a whole sampling STAR; None when absent or not whole."""
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
