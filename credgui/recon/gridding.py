"""RELION 3.1's gridded reconstruction (BackProjector::reconstruct): Pipe-Menon weights,
windowing to the original box, soft edge and sinc^2 gridding correction.

No scipy import at module level: this runs in every hook call, where scipy's import alone
costs as much as RELION's whole reconstruction at box 64 (see ``credgui.metrics.fft``).
"""

from __future__ import annotations

import numpy as np

from credgui.metrics.fft import irfftn, irfftn_window, rfftn
from credgui.recon.fourier import max_radius2, rfft_radius2

BLOB_RADIUS = 1.9 * 2.0  # RELION: tab_ftblob.initialise(_blob_radius * 2., alpha=15, order=0, 10000)
BLOB_ALPHA = 15.0
_N_TAB = 10000


def _i32_over_x32(x: np.ndarray) -> np.ndarray:
    """I_{3/2}(x) / x^{3/2}: closed form for half-integer order, series near 0 (no cancellation)."""
    x = np.asarray(x, dtype=np.float64)
    small = x < 0.1
    xs = np.where(small, 1.0, x)
    closed = np.sqrt(2.0 / np.pi) * (np.cosh(xs) - np.sinh(xs) / xs) / xs**2
    x2 = x * x
    series = np.sqrt(2.0 / np.pi) * (1.0 / 3.0 + x2 / 30.0 + x2 * x2 / 840.0)
    return np.where(small, series, closed)


def _j32_over_x32(x: np.ndarray) -> np.ndarray:
    """J_{3/2}(x) / x^{3/2}, as ``_i32_over_x32``."""
    x = np.asarray(x, dtype=np.float64)
    small = x < 0.1
    xs = np.where(small, 1.0, x)
    closed = np.sqrt(2.0 / np.pi) * (np.sin(xs) / xs - np.cos(xs)) / xs**2
    x2 = x * x
    series = np.sqrt(2.0 / np.pi) * (1.0 / 3.0 - x2 / 30.0 + x2 * x2 / 840.0)
    return np.where(small, series, closed)


def kaiser_fourier_m0(w: np.ndarray, a: float = BLOB_RADIUS, alpha: float = BLOB_ALPHA) -> np.ndarray:
    """Fourier transform of a Kaiser-Bessel blob of order 0 at frequency ``w`` (RELION's
    kaiser_Fourier_value, m = 0): (2 pi)^1.5 a^3 / I0(alpha) * I_1.5(sigma) / sigma^1.5, with
    sigma = sqrt(|alpha^2 - (2 pi a w)^2|) and J_1.5 beyond s = alpha."""
    s = 2.0 * np.pi * a * np.asarray(w, dtype=np.float64)
    sigma = np.sqrt(np.abs(alpha**2 - s**2))
    pref = (2.0 * np.pi) ** 1.5 * a**3 / float(np.i0(alpha))
    return np.where(s > alpha, pref * _j32_over_x32(sigma), pref * _i32_over_x32(sigma))


_TABLE = kaiser_fourier_m0(np.arange(_N_TAB) * (0.5 / _N_TAB))


def ftblob(rval: np.ndarray) -> np.ndarray:
    """Tabulated blob FT normalised to 1 at 0, as RELION's TabFtBlob lookup (floor index)."""
    idx = (np.abs(rval) / (0.5 / _N_TAB)).astype(np.int64)
    ok = idx < _N_TAB
    return np.where(ok, _TABLE[np.minimum(idx, _N_TAB - 1)], 0.0) / _TABLE[0]


def _axis_index(h: int, n: int) -> np.ndarray:
    """Indices of the frequencies -h..h on a period-n axis (h < n/2)."""
    return np.r_[0 : h + 1, n - h : n]


def _move_grid(array: np.ndarray, n_from: int, n_to: int, h: int) -> np.ndarray:
    """Frequencies |k_i| <= h of an rfft array on an n_from grid, placed on a zero n_to grid."""
    zf, zt = _axis_index(h, n_from), _axis_index(h, n_to)
    out = np.zeros((n_to, n_to, n_to // 2 + 1), dtype=array.dtype)
    out[np.ix_(zt, zt, np.arange(h + 1))] = array[np.ix_(zf, zf, np.arange(h + 1))]
    return out


def pipe_menon_weights(
    weight_with_prior: np.ndarray, current_size: int, padding: float, ori_size: int, n_iter: int = 10
) -> tuple[np.ndarray, int, int]:
    """Density-compensation weights (Pipe & Menon 1999, eq. 14) for K + prior, on RELION's grid.

    The grid is RELION's pad_size = 2 (ROUND(pad r_max) + 1) + 1 (odd), with RELION's
    real-space index convention (index pad_size//2 counts as -(pad_size//2 + 1)). Both matter:
    a 2^a 3^b 5^c grid or a symmetric index changes the map by ~4 % rms at box 40.
    Returns (newweight (n, n, n//2+1) float64, n, h): h the largest per-axis frequency with data.
    """
    n_big = weight_with_prior.shape[0]
    r_pad = int(np.floor((current_size // 2) * padding + 0.5))
    n = 2 * (r_pad + 1) + 1
    max_r2 = max_radius2(current_size, padding)
    h = min(int(np.ceil(np.sqrt(max_r2))), n_big // 2 - 1)
    inside = rfft_radius2(n) < max_r2
    fweight = _move_grid(np.asarray(weight_with_prior, dtype=np.float32), n_big, n, h) * inside
    newweight = inside.astype(np.float64)
    idx = np.arange(n)
    idx = np.where(idx < n // 2, idx, idx - n).astype(np.float64)
    rr = np.sqrt(idx[:, None, None] ** 2 + idx[None, :, None] ** 2 + idx[None, None, :] ** 2)
    blob = ftblob(rr / (ori_size * padding)).astype(np.float32)
    del rr
    for _ in range(n_iter):
        m = irfftn((newweight * fweight).astype(np.float32), n, repeats=2 * n_iter)
        m *= blob
        w = np.maximum(1e-6, np.abs(rfftn(m, repeats=2 * n_iter)[inside]))
        newweight[inside] /= w
    return newweight, n, h


def gridded_map(
    data: np.ndarray, weight_with_prior: np.ndarray, ori_size: int, current_size: int, padding: float,
    n_iter: int = 10,
) -> np.ndarray:
    """Real-space map (ori, ori, ori) float32 from data (B, or eq. 17's numerator) and K + prior.

    data, weight_with_prior: (P, P, P//2+1) rfft layout, origin [0,0,0], P = round(pad * ori).
    """
    n_big = data.shape[0]
    newweight, n, h = pipe_menon_weights(weight_with_prior, current_size, padding, ori_size, n_iter)
    newweight = np.minimum(newweight, 1e20)
    big = np.zeros(data.shape, dtype=np.complex64)
    zb, zs = _axis_index(h, n_big), _axis_index(h, n)
    sel_b, sel_s = np.ix_(zb, zb, np.arange(h + 1)), np.ix_(zs, zs, np.arange(h + 1))
    big[sel_b] = data[sel_b] * newweight[sel_s]
    return window_real(big, ori_size, padding, soft_edge=True)


def sinc2_correction(ori_size: int, padding: float) -> np.ndarray:
    """sinc^2(r / (ori pad)) on the centred (ori, ori, ori) box: the trilinear-interpolation
    gridding correction RELION divides by (projector.cpp griddingCorrect). float32."""
    c = np.arange(ori_size) - ori_size // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return (np.sinc(r / (ori_size * padding)) ** 2).astype(np.float32)


def soften_edge(vol: np.ndarray, width: float = 3.0) -> np.ndarray:
    """RELION's softMaskOutsideMap: beyond radius ori/2 blend to the mean of the outer shell."""
    ori = vol.shape[0]
    c = np.arange(ori) - ori // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    radius = ori / 2.0
    rp = radius + width
    rc = 0.5 + 0.5 * np.cos(np.pi * (rp - r) / width)
    outer = r > rp
    edge = (r >= radius) & ~outer
    wsum = outer.sum() + rc[edge].sum()
    bg = (vol[outer].sum(dtype=np.float64) + (rc[edge] * vol[edge]).sum(dtype=np.float64)) / wsum if wsum > 0 else 0.0
    vol[outer] = bg
    vol[edge] = (1 - rc[edge]) * vol[edge] + rc[edge] * bg
    return vol


def window_real(f_padded: np.ndarray, ori_size: int, padding: float, *, soft_edge: bool) -> np.ndarray:
    """irfft of the padded grid, centre window to ori, RELION's scale, soft edge, sinc^2 correction.

    (P, P, P//2+1) complex -> (ori, ori, ori) float32, origin at index ori//2.
    """
    vol = irfftn_window(f_padded, ori_size) * np.float32(ori_size**2)
    if soft_edge:
        vol = soften_edge(vol)
    return (vol / sinc2_correction(ori_size, padding)).astype(np.float32)
