"""FFT helpers for the hook's hot path, pruned where only a window is needed.

Here in ``credgui.metrics`` (the floor under ``credgui.recon``) because the one Fourier
crop/pad (``credgui.metrics.resample``) and the hook's reconstruction share this backend.

Backend by size: numpy.fft up to ~300^3, scipy.fft (threaded) beyond. Why: importing
scipy.fft pulls in scipy.special (0.2-0.4 s per hook call, as much as RELION's whole
reconstruction at box 64), and with numpy's forward transforms routed through its fast
inverse path (``_np_fft``) numpy matches scipy up to ~260^3 here (2 cores); at 387^3 scipy is
~1.5x faster. numpy >= 2 transforms float32/complex64 natively.
The pruned transforms go one axis at a time and crop (or zero-pad) between axes, so the
(P, P, P) real-space array of the padded grid is never made: ~2x less work and memory at pad 2.

Layout: rfft, origin at [0, 0, 0], axes (z, y, x). A real-space box of side ``ori`` is
"centred": its voxel ``ori//2`` along each axis is the origin of the periodic P-grid.
"""

from __future__ import annotations

import numpy as np

SCIPY_FROM_VOXELS = 300**3  # grids this big use scipy.fft (measured, see module docstring)


def _fft_module(voxels: int, repeats: int = 1):
    """(module, extra kwargs) for transforms over ``voxels`` grid points (``repeats``: how many
    the caller does; kept for the caller's intent, the threshold is per transform)."""
    if voxels >= SCIPY_FROM_VOXELS:
        try:
            import scipy.fft as sfft  # deferred: see module docstring

            return sfft, {"workers": -1}
        except ImportError:  # pragma: no cover - scipy is a dependency, numpy is enough
            pass
    return np.fft, {}


def _np_fft(a: np.ndarray, axis: int) -> np.ndarray:
    """Forward c2c along ``axis`` as n conj(ifft(conj(a))): numpy 2.4's unscaled forward
    path is 3-10x slower than its scaled inverse (measured, 63^3-147^3 complex64)."""
    out = np.fft.ifft(np.conjugate(a), axis=axis)
    np.conjugate(out, out=out)
    out *= np.float32(a.shape[axis])
    return out


def _np_rfftn(a: np.ndarray) -> np.ndarray:
    """numpy r2c through ihfft + ifft (see ``_np_fft``): ihfft = conj(rfft)/n along x, then
    the conjugated inverse along y and z, one conjugation and one scaling at the end."""
    n0, n1, n2 = a.shape
    x = np.fft.ihfft(a, axis=2)
    x = np.fft.ifft(x, axis=1)
    x = np.fft.ifft(x, axis=0)
    np.conjugate(x, out=x)
    x *= np.float32(n0) * np.float32(n1) * np.float32(n2)
    return x


def rfftn(a: np.ndarray, repeats: int = 1) -> np.ndarray:
    """3D r2c transform of a real (n, n, n) array, unnormalised, complex64 for float32 input.
    ``repeats``: how many such transforms the caller will do (picks the backend)."""
    mod, kw = _fft_module(a.size, repeats)
    if mod is np.fft:
        return _np_rfftn(a)
    return mod.rfftn(a, axes=(0, 1, 2), **kw)


def irfftn(f: np.ndarray, n: int, repeats: int = 1) -> np.ndarray:
    """3D c2r transform to (n, n, n), normalised by 1/n^3 (numpy's convention)."""
    mod, kw = _fft_module(n**3, repeats)
    return mod.irfftn(f, s=(n, n, n), axes=(0, 1, 2), **kw)


def _fft1(a: np.ndarray, axis: int, inverse: bool, voxels: int) -> np.ndarray:
    mod, kw = _fft_module(voxels)
    if mod is np.fft and not inverse:
        return _np_fft(a, axis)
    return (mod.ifft if inverse else mod.fft)(a, axis=axis, **kw)


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
    if mod is np.fft:
        a = np.conjugate(np.fft.ihfft(line, axis=2)) * np.float32(p)
    else:
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
