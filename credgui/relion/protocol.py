"""RELION 3.1's ``--external_reconstruct`` protocol: what RELION hands over, what it reads back.

RELION writes ``ROOT_external_reconstruct.star`` plus three MRC arrays (B real, B imaginary, K)
and runs ``$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE STAR``; it then reads the real-space map
named by ``_rlnExtReconsResult`` once, without checking its size (see
shared docs and RELION 3.1.3 src/backprojector.cpp, BackProjector::externalReconstruct).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from credgui.errors import InputError
from credgui.relion.mrc import read_mrc
from credgui.relion.star import column, get_block, read_star, scalar

STAR_SUFFIX = "_external_reconstruct.star"
_ROOT_RE = re.compile(r"_it(?P<it>\d{3})(?:_half(?P<half>\d))?_(?:class|body)(?P<cls>\d{3})$")


@dataclass(frozen=True)
class ExternalReconstructCall:
    """One M-step handed over by RELION (eq. 11 inputs: B, K and the tau2 spectrum).

    ``tau2`` and ``fsc`` are indexed by unpadded shell 0..ori_size//2 (``_rlnSpectralIndex``).
    ``half`` is None for the final joined-data call (root without ``_halfN``).
    """

    star: Path
    data_real: Path
    data_imag: Path
    weight: Path
    result: Path
    result_star: Path | None
    tau2_fudge: float
    padding: float
    dimensionality: int
    ori_size: int
    current_size: int
    tau2: np.ndarray
    fsc: np.ndarray
    pixel_size: float | None = None
    """``_rlnPixelSize`` (A): RELION 4.0 and 5.0 write it, 3.1 does not (None)."""

    @property
    def root(self) -> str:
        """e.g. ``run_it003_half1_class001``."""
        name = self.star.name
        return name[: -len(STAR_SUFFIX)] if name.endswith(STAR_SUFFIX) else self.star.stem

    @property
    def job_dir(self) -> Path:
        return self.star.parent

    @property
    def iteration(self) -> int | None:
        m = _ROOT_RE.search(self.root)
        return int(m["it"]) if m else None

    @property
    def half(self) -> int | None:
        m = _ROOT_RE.search(self.root)
        return int(m["half"]) if m and m["half"] else None

    @property
    def class_number(self) -> int | None:
        m = _ROOT_RE.search(self.root)
        return int(m["cls"]) if m else None

    @property
    def padded_size(self) -> int:
        """P = round(pad * ori_size): the side of RELION's padded Fourier grid."""
        return int(round(self.padding * self.ori_size))

    @property
    def fourier_shape(self) -> tuple[int, int, int]:
        p = self.padded_size
        return (p, p, p // 2 + 1)

    def output_path(self, suffix: str) -> Path:
        """``JOB/ROOT_<suffix>``: where credgui writes its per-call maps for the GUI."""
        return self.job_dir / f"{self.root}_{suffix}"


def _resolve(star: Path, value: str) -> Path:
    """RELION writes paths relative to its own working directory, which is the hook's cwd too;
    fall back to the STAR's directory for a copied job."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    local = star.parent / path.name
    return local if local.exists() else path


def read_call(star_path: str | Path) -> ExternalReconstructCall:
    """Parse and validate RELION's ``*_external_reconstruct.star`` (not the arrays yet)."""
    star = Path(star_path)
    blocks = read_star(star)
    general = get_block(blocks, "external_reconstruct_general", star)
    tau_block = get_block(blocks, "external_reconstruct_tau2", star)
    ori_size = scalar(general, "rlnOriginalImageSize", star, int)
    current_size = scalar(general, "rlnCurrentImageSize", star, int)
    padding = scalar(general, "rlnPaddingFactor", star, float)
    dim = scalar(general, "rlnReferenceDimensionality", star, int)
    fudge = scalar(general, "rlnTau2FudgeFactor", star, float)
    if dim != 3:
        raise InputError(star, f"_rlnReferenceDimensionality is {dim}; credgui reconstructs 3D maps only")
    if ori_size < 8 or ori_size % 2:
        raise InputError(star, f"_rlnOriginalImageSize {ori_size} must be an even box of at least 8")
    if not 0 < current_size <= ori_size:
        raise InputError(star, f"_rlnCurrentImageSize {current_size} not in (0, {ori_size}]")
    if not 1 <= padding <= 4:
        raise InputError(star, f"_rlnPaddingFactor {padding} outside [1, 4]")
    if not (np.isfinite(fudge) and fudge > 0):
        raise InputError(star, f"_rlnTau2FudgeFactor {fudge} must be a finite number > 0")
    if not np.isfinite(padding):
        raise InputError(star, f"_rlnPaddingFactor {padding} must be finite")
    index = np.asarray(column(tau_block, "rlnSpectralIndex", star, int))
    tau2 = np.asarray(column(tau_block, "rlnReferenceTau2", star, float))
    fsc = np.asarray(column(tau_block, "rlnGoldStandardFsc", star, float))
    n_shells = ori_size // 2 + 1
    if len(index) != n_shells or not np.array_equal(index, np.arange(n_shells)):
        raise InputError(star, f"tau2 table must list spectral indices 0..{n_shells - 1}, got {len(index)} rows")
    if not (np.isfinite(tau2).all() and np.isfinite(fsc).all()):
        raise InputError(star, "tau2 or FSC column holds NaN or infinite values")
    if (tau2 < 0).any():
        raise InputError(star, "negative values in _rlnReferenceTau2")
    result_star = general.get("rlnExtReconsResultStarfile")
    pixel_size = None
    if general.get("rlnPixelSize"):
        pixel_size = scalar(general, "rlnPixelSize", star, float)
        if not pixel_size > 0:
            raise InputError(star, f"_rlnPixelSize {pixel_size} must be > 0")
    return ExternalReconstructCall(
        star=star,
        data_real=_resolve(star, scalar(general, "rlnExtReconsDataReal", star, str)),
        data_imag=_resolve(star, scalar(general, "rlnExtReconsDataImag", star, str)),
        weight=_resolve(star, scalar(general, "rlnExtReconsWeight", star, str)),
        result=Path(scalar(general, "rlnExtReconsResult", star, str)),
        result_star=Path(result_star[0]) if result_star else None,
        tau2_fudge=fudge,
        padding=padding,
        dimensionality=dim,
        ori_size=ori_size,
        current_size=current_size,
        tau2=tau2,
        fsc=fsc,
        pixel_size=pixel_size,
    )


def read_arrays(call: ExternalReconstructCall) -> tuple[np.ndarray, np.ndarray]:
    """B (complex64) and K (float32), shape (P, P, P//2+1), rfft layout, origin at [0,0,0].

    Each array is checked for shape and finiteness; K must be non-negative.
    """
    shape = call.fourier_shape
    # memory-mapped reads, copied once into the arrays used (a plain read copies twice:
    # at box 256, pad 2 each array is 270 MB)
    data = np.empty(shape, dtype=np.complex64)
    data.real = _float32(read_mrc(call.data_real, shape, mmap=True))
    data.imag = _float32(read_mrc(call.data_imag, shape, mmap=True))
    weight = np.array(_float32(read_mrc(call.weight, shape, mmap=True)), dtype=np.float32)
    if (weight < 0).any():
        raise InputError(call.weight, "negative values in the weight array K")
    if not weight.any():
        raise InputError(call.weight, "the weight array K is all zero (no particle contributed): "
                                      "nothing to reconstruct")
    return data, weight


def _float32(a: np.ndarray) -> np.ndarray:
    """A float32 view if possible (mode-2 MRC), else a converted copy."""
    return a if a.dtype == np.float32 else a.astype(np.float32)


_IT_RE = re.compile(r"_it(\d{3})_")


def _latest(job_dir: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` in ``job_dir``, newest iteration first."""
    files = list(job_dir.glob(pattern))
    return sorted(files, key=lambda p: (int(m[1]) if (m := _IT_RE.search(p.name)) else -1, p.name), reverse=True)


def _star_head(path: Path, stop_block: str) -> str:
    """The text of a STAR file up to the data block ``stop_block`` (the particle table of a
    data.star can be 100s of MB; the optics table is at its top)."""
    lines: list[str] = []
    with open(path) as fh:
        for line in fh:
            if line.strip() == f"data_{stop_block}":
                break
            lines.append(line)
    return "".join(lines)


def _newest_value(
    paths: list[Path], block: str, label: str, convert: Callable[[str], Any], read: Callable | None = None,
) -> tuple[Any, Path] | None:
    """(value, file) of the first of ``paths`` (newest first) whose ``block`` holds a usable
    ``label`` (``convert`` returns None or raises for an unusable one); None when none does.
    A file that cannot be read is passed over: RELION may be rewriting it."""
    for path in paths:
        try:
            blocks = read(path) if read else _read_star_once(path)
            value = convert(blocks.get(block, {})[label][0])
        except (InputError, KeyError, ValueError, IndexError, OSError):
            continue
        if value is not None:
            return value, path
    return None


@functools.lru_cache(maxsize=8)
def _read_star_cached(path: Path, mtime_ns: int, size: int) -> dict:
    return read_star(path)


def _read_star_once(path: Path) -> dict:
    """``read_star``, parsed once per hook call for the pixel size and RELION's resolution
    (both read the newest model STAR); keyed on mtime and size, so a rewritten file is re-read."""
    st = path.stat()
    return _read_star_cached(path, st.st_mtime_ns, st.st_size)


def _positive(text: str) -> float | None:
    """A finite value > 0, else None (RELION writes ``inf`` as iteration 0's current resolution)."""
    value = float(text)
    return value if math.isfinite(value) and value > 0 else None


def find_pixel_size(call: ExternalReconstructCall) -> tuple[float, Path] | None:
    """(pixel size in A, the file it came from) for the run that made ``call``, or None.

    RELION 3.1's hook STAR has no pixel size. Looked up in the job directory: the newest
    ``*_model.star`` (``_rlnPixelSize`` of data_model_general; RELION writes the previous
    iteration's before the M-step), else the newest ``*_data.star``'s optics table
    (``_rlnImagePixelSize``, first optics group).
    """
    from credgui.relion.star import parse_star

    job = call.job_dir
    return _newest_value(_latest(job, "*_model.star"), "model_general", "rlnPixelSize", _positive) or \
        _newest_value(_latest(job, "*_data.star"), "optics", "rlnImagePixelSize", _positive,
                      read=lambda p: parse_star(_star_head(p, "particles"), p))


def find_relion_resolution(call: ExternalReconstructCall) -> tuple[float, Path] | None:
    """(RELION's current resolution in A, the model STAR it came from) for ``call``, or None.

    ``_rlnCurrentResolution`` of the newest ``*_model.star`` of an iteration before the call's
    (RELION writes iteration N-1's model before iteration N's M-step): the resolution RELION
    itself is working at, which sets its current image size and is what it reports.
    """
    it = call.iteration
    paths = [p for p in _latest(call.job_dir, "*_model.star")
             if it is None or (m := _IT_RE.search(p.name)) is None or int(m[1]) < it]
    return _newest_value(paths, "model_general", "rlnCurrentResolution", _positive)


def find_symmetry(call: ExternalReconstructCall) -> tuple[str, Path] | None:
    """(point group, the file it came from): ``_rlnSymmetryGroup`` of the newest
    ``*_sampling.star`` in the job directory (RELION writes one per iteration), or None."""
    return _newest_value(_latest(call.job_dir, "*_sampling.star"), "sampling_general", "rlnSymmetryGroup",
                         lambda v: str(v).strip() or None)
