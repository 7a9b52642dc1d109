"""MRC volumes in and out, validated at the door and written atomically; a cheap whole-file check.

``mrcfile`` is imported where a map is read or written, so ``mrc_is_whole`` (polled by the job
watcher and the GUI) costs no import.

Arrays are numpy in MRC order: (z, y, x) for volumes, (n, y, x) for stacks.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from credgui._io import atomic_open
from credgui.errors import InputError


def read_mrc(
    path: str | Path,
    expect_shape: tuple[int, ...] | None = None,
    *,
    check_finite: bool = True,
    mmap: bool = False,
) -> np.ndarray:
    """Read an MRC file's data as a float32 array (a copy unless ``mmap``).

    Raises InputError naming the file when it is missing, truncated, not MRC, of the wrong
    shape, or holds NaN/Inf.
    """
    import mrcfile

    path = Path(path)
    if not path.exists():
        raise InputError(path, "MRC file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file (a device, folder or pipe), so not an MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # mrcfile warns (not raises) on a truncated file
            if mmap:
                mrc = mrcfile.mmap(path, mode="r", permissive=False)
                data = mrc.data
            else:
                with mrcfile.open(path, mode="r", permissive=False) as mrc:
                    data = mrc.data
                    if data is not None and not np.iscomplexobj(data):
                        data = np.asarray(data, dtype=np.float32).copy()
    except (ValueError, RuntimeWarning, OSError, EOFError, OverflowError) as exc:
        # OverflowError: mmap of a header with a negative size (nx = -5)
        raise InputError(path, f"not a readable MRC file ({_short(exc)})") from None
    if data is None:
        raise InputError(path, "MRC file holds no data")
    if np.iscomplexobj(data):
        raise InputError(path, f"holds complex values (MRC mode {_mode(data)}) where a real map is "
                               "expected; its imaginary part would be dropped")
    if expect_shape is not None and tuple(data.shape) != tuple(expect_shape):
        raise InputError(
            path, f"shape {tuple(data.shape)} (z,y,x) where {tuple(expect_shape)} is expected"
        )
    if check_finite and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(path, f"{bad} NaN or infinite values")
    return data


def read_voxel_size(path: str | Path) -> float:
    """Voxel size in A from the header (x axis), 0.0 when the header has none."""
    import mrcfile

    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            return float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(path, f"not a readable MRC file ({_short(exc)})") from None


def write_mrc_atomic(
    path: str | Path,
    data: np.ndarray,
    voxel_size: float | None = None,
    *,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write float32 ``data`` to ``path`` via a temporary file in the same directory and rename,
    so readers (RELION, the GUI) never see a half-written map (``credgui._io.atomic_open``).

    ``before_replace``: called once the map is complete, before it is renamed into place; if
    it raises, the map is discarded and ``path`` is untouched (the hook logs its record there).
    """
    from mrcfile.mrcinterpreter import MrcInterpreter

    with atomic_open(path) as fh:
        # mrcfile's documented way to write to a stream we opened (credgui._io: O_EXCL temp)
        mrc = MrcInterpreter()
        mrc._create_default_attributes()
        mrc._iostream = fh
        mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
        if voxel_size:
            mrc.voxel_size = float(voxel_size)
        mrc.flush()
        if before_replace is not None:
            before_replace()


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


def _mode(data: np.ndarray) -> int:
    return 4 if data.dtype == np.complex64 else 3


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
