"""RELION 3.1's gridded reconstruction (BackProjector::reconstruct): Pipe-Menon weights,
windowing to the original box, soft edge and sinc^2 gridding correction."""

from __future__ import annotations

import numpy as np
import scipy.fft

from credgui.recon.fourier import max_radius2, rfft_radius2

BLOB_RADIUS = 1.9 * 2.0  # RELION: tab_ftblob.initialise(_blob_radius * 2., alpha=15, order=0, 10000)
BLOB_ALPHA = 15.0
_N_TAB = 10000


def _kaiser_fourier_m0(w: np.ndarray, a: float = BLOB_RADIUS, alpha: float = BLOB_ALPHA) -> np.ndarray:
    """Fourier transform of a Kaiser-Bessel blob of order 0 (RELION kaiser_Fourier_value, m=0)."""
    from scipy.special import iv, jv

    s = 2.0 * np.pi * a * w
    sigma = np.sqrt(np.abs(alpha**2 - s**2))
    sigma = np.maximum(sigma, 1e-12)
    pref = (2.0 * np.pi) ** 1.5 * a**3 / iv(0, alpha)
    return np.where(s > alpha, pref * jv(1.5, sigma) / sigma**1.5, pref * iv(1.5, sigma) / sigma**1.5)


_TABLE = _kaiser_fourier_m0(np.arange(_N_TAB) * (0.5 / _N_TAB))


def ftblob(rval: np.ndarray) -> np.ndarray:
    """Tabulated blob FT normalised to 1 at 0, as RELION's TabFtBlob lookup (floor index)."""
    idx = (np.abs(rval) / (0.5 / _N_TAB)).astype(np.int64)
    out = np.zeros(rval.shape, dtype=np.float64)
    ok = idx < _N_TAB
    out[ok] = _TABLE[idx[ok]]
    return out / _TABLE[0]


def _sub_grid(array: np.ndarray, n_big: int, n_small: int) -> np.ndarray:
    """Frequencies |k| <= n_small//2 of an rfft array on an n_big grid, moved to an n_small grid."""
    h = n_small // 2
    z = np.r_[0 : h + 1, n_big - h : n_big]
    return array[np.ix_(z, z, np.arange(h + 1))]


def _to_big_grid(array: np.ndarray, n_small: int, n_big: int) -> np.ndarray:
    h = n_small // 2
    out = np.zeros((n_big, n_big, n_big // 2 + 1), dtype=array.dtype)
    z = np.r_[0 : h + 1, n_big - h : n_big]
    out[np.ix_(z, z, np.arange(h + 1))] = array
    return out


def gridded_map(
    data: np.ndarray, weight_with_prior: np.ndarray, ori_size: int, current_size: int, padding: float,
    n_iter: int = 10,
) -> np.ndarray:
    """Real-space map (ori, ori, ori) from data (B or eq. 17's numerator) and K + prior.

    data, weight_with_prior: (P, P, P//2+1) rfft layout, P = round(pad * ori).
    """
    n_big = data.shape[0]
    r_pad = int(np.floor((current_size // 2) * padding + 0.5))
    n = 2 * (r_pad + 1) + 1  # RELION's pad_size
    max_r2 = max_radius2(current_size, padding)
    r2 = rfft_radius2(n)
    inside = r2 < max_r2
    fweight = _sub_grid(weight_with_prior, n_big, n).astype(np.float32) * inside
    fdata = _sub_grid(data, n_big, n) * inside
    newweight = inside.astype(np.float64)
    # real-space blob multiplier on the pad_size grid
    idx = np.arange(n)
    idx = np.where(idx < n // 2, idx, idx - n).astype(np.float64)
    rr = np.sqrt(idx[:, None, None] ** 2 + idx[None, :, None] ** 2 + idx[None, None, :] ** 2)
    blob = ftblob(rr / (ori_size * padding)).astype(np.float32)
    for _ in range(n_iter):
        conv = (newweight * fweight).astype(np.complex64)
        m = scipy.fft.irfftn(conv, s=(n, n, n), workers=-1)
        m *= blob
        conv = scipy.fft.rfftn(m, workers=-1)
        w = np.maximum(1e-6, np.abs(conv[inside]))
        newweight[inside] /= w
    fconv = (fdata * np.minimum(newweight, 1e20)).astype(np.complex64)
    big = _to_big_grid(fconv, n, n_big)
    return window_real(big, ori_size, padding, soft_edge=True)


def window_real(f_padded: np.ndarray, ori_size: int, padding: float, *, soft_edge: bool) -> np.ndarray:
    """irfft of the padded grid, centre window to ori, RELION's scale, soft edge, sinc^2 correction."""
    p = f_padded.shape[0]
    full = scipy.fft.irfftn(f_padded, s=(p, p, p), workers=-1)
    sel = (np.arange(ori_size) - ori_size // 2) % p
    vol = full[np.ix_(sel, sel, sel)].astype(np.float64) * ori_size**2
    c = np.arange(ori_size) - ori_size // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if soft_edge:
        radius, width = ori_size / 2.0, 3.0
        rp = radius + width
        rc = 0.5 + 0.5 * np.cos(np.pi * (rp - r) / width)
        outer = r > rp
        edge = (r >= radius) & ~outer
        wsum = outer.sum() + rc[edge].sum()
        bg = (vol[outer].sum() + (rc[edge] * vol[edge]).sum()) / wsum if wsum > 0 else 0.0
        vol[outer] = bg
        vol[edge] = (1 - rc[edge]) * vol[edge] + rc[edge] * bg
    rval = r / (ori_size * padding)
    sinc = np.where(r > 0, np.sinc(rval), 1.0)
    return (vol / sinc**2).astype(np.float32)
