"""FFT helpers for the hook's hot path, pruned where only a window is needed.

Backend by size: numpy.fft for small grids, scipy.fft (threaded) for large ones. Why: importing
scipy.fft pulls in scipy.special (0.2-0.4 s per hook call, as much as RELION's whole
reconstruction at box 64), but from about 100^3 on its threaded, faster r2c repays that.
numpy >= 2 transforms float32/complex64 natively.
The pruned transforms go one axis at a time and crop (or zero-pad) between axes, so the
(P, P, P) real-space array of the padded grid is never made: ~2x less work and memory at pad 2.

Layout: rfft, origin at [0, 0, 0], axes (z, y, x). A real-space box of side ``ori`` is
"centred": its voxel ``ori//2`` along each axis is the origin of the periodic P-grid.
"""

from __future__ import annotations

import numpy as np

_SMOOTH = (2, 3, 5)
SCIPY_FROM_WORK = 40 * 10**6  # voxels x transforms from which scipy.fft repays its import


def _fft_module(voxels: int, repeats: int = 1):
    """(module, extra kwargs) for ``repeats`` transforms over ``voxels`` grid points each.

    Measured here (2 cores): the Pipe-Menon loop (20 transforms) at n = 99 is faster with
    numpy including nothing to import; at n >= 131 scipy's threads win despite its import."""
    if voxels * repeats >= SCIPY_FROM_WORK:
        try:
            import scipy.fft as sfft  # deferred: see module docstring

            return sfft, {"workers": -1}
        except ImportError:  # pragma: no cover - scipy is a dependency, numpy is enough
            pass
    return np.fft, {}


def rfftn(a: np.ndarray, repeats: int = 1) -> np.ndarray:
    """3D r2c transform of a real (n, n, n) array, unnormalised, complex64 for float32 input.
    ``repeats``: how many such transforms the caller will do (picks the backend)."""
    mod, kw = _fft_module(a.size, repeats)
    return mod.rfftn(a, axes=(0, 1, 2), **kw)


def irfftn(f: np.ndarray, n: int, repeats: int = 1) -> np.ndarray:
    """3D c2r transform to (n, n, n), normalised by 1/n^3 (numpy's convention)."""
    mod, kw = _fft_module(n**3, repeats)
    return mod.irfftn(f, s=(n, n, n), axes=(0, 1, 2), **kw)


def _fft1(a: np.ndarray, axis: int, inverse: bool, voxels: int) -> np.ndarray:
    mod, kw = _fft_module(voxels)
    return (mod.ifft if inverse else mod.fft)(a, axis=axis, **kw)


def fast_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is fastest on these; primes like 131 are slow)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in _SMOOTH:
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _centred_index(ori: int, p: int) -> np.ndarray:
    """Indices on a period-p axis of the voxels -ori//2 .. ori - ori//2 - 1 (window order)."""
    return (np.arange(ori) - ori // 2) % p


def irfftn_window(f_padded: np.ndarray, ori: int) -> np.ndarray:
    """Central (ori, ori, ori) window of ``irfftn(f_padded)`` on the P-grid (numpy's 1/P^3 norm).

    f_padded: (P, P, P//2+1) complex rfft layout. Output float32, origin at index ori//2.
    """
    p = f_padded.shape[0]
    sel = _centred_index(ori, p)
    f = np.asarray(f_padded, dtype=np.complex64)
    # z: transform whole columns, keep only the window's planes (chunked along x to bound memory)
    tmp = np.empty((ori, p, f.shape[2]), dtype=np.complex64)
    step = max(1, (1 << 24) // max(1, p * p))
    for j0 in range(0, f.shape[2], step):
        tmp[:, :, j0 : j0 + step] = _fft1(f[:, :, j0 : j0 + step], 0, True, f.size)[sel]
    tmp = _fft1(tmp, 1, True, f.size)[:, sel]
    mod, kw = _fft_module(f.size)
    out = mod.irfft(tmp, n=p, axis=2, **kw)
    return np.ascontiguousarray(out[:, :, sel], dtype=np.float32)


def rfftn_padded(vol: np.ndarray, p: int) -> np.ndarray:
    """``rfftn`` on the P-grid of the centred (ori, ori, ori) ``vol`` zero-padded to P: the
    inverse of ``irfftn_window`` for maps supported in the window. (P, P, P//2+1) complex64."""
    ori = vol.shape[0]
    sel = _centred_index(ori, p)
    line = np.zeros((ori, ori, p), dtype=np.float32)
    line[:, :, sel] = vol
    mod, kw = _fft_module(p**3)
    a = mod.rfft(line, axis=2, **kw).astype(np.complex64)
    del line
    b = np.zeros((ori, p, a.shape[2]), dtype=np.complex64)
    b[:, sel] = a
    b = _fft1(b, 1, False, p**3).astype(np.complex64, copy=False)
    out = np.zeros((p, p, a.shape[2]), dtype=np.complex64)
    out[sel] = b
    del a, b
    step = max(1, (1 << 24) // max(1, p * p))
    for j0 in range(0, out.shape[2], step):
        out[:, :, j0 : j0 + step] = _fft1(out[:, :, j0 : j0 + step], 0, False, p**3)
    return out
