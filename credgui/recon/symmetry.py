"""RELION's point groups and real-space symmetrisation of a map (for the denoiser term f(x~)).

RELION symmetrises B and K before it calls the hook, so x~ = B/K is symmetric, but a denoiser's
f(x~) need not be: the hook averages it over the run's point group (``--sym``) so that a
point-group refinement keeps its symmetry where lambda > 0.

Groups: the proper point groups relion_refine refines with: ``Cn``, ``Dn``, ``T``, ``O`` and
``I`` (= ``I2``), ``I1``-``I4``. Their axes follow RELION's conventions (src/symmetries.cpp,
SymList::fill_symmetry_class, the same in 3.1, 4.0 and 5.0): Cn about z; Dn adds a 2-fold
about x; T a 3-fold about z and a 2-fold about (0, 0.816496, 0.577350); O a 4-fold about z and a
3-fold about (1, 1, 1); the icosahedral settings by their 2-, 5- and 3-fold axes. The group is
the closure of these generators (rotations in (x, y, z), acting about the box centre
``n // 2``, RELION's origin). Improper groups (Ci, Cs, Cnv, Cnh, Sn, Dnv, Dnh, Td, Th, Oh, Ih)
are refused: RELION's auto-refine is for chiral molecules.

Only numpy at import; scipy.ndimage is imported when a map is symmetrised.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_GEN: dict[str, list[tuple[int, tuple[float, float, float]]]] = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (0.525731114, 0.0, 0.850650807)), (3, (0.0, 0.356822076, 0.934172364))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (0.85065080702670, 0.0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0.0))],
    "I3": [(2, (-0.5257311143, 0.0, 0.8506508070)), (5, (0.0, 0.0, 1.0)),
           (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
    "I4": [(2, (0.5257311143, 0.0, 0.8506508070)), (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
           (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
}
_ORDER = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _axis_rotation(order: int, axis: tuple[float, float, float]) -> np.ndarray:
    """Rotation by 2 pi / order about ``axis`` (Rodrigues), acting on (x, y, z) column vectors."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    a = 2.0 * np.pi / order
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def normalise_group(name: str) -> str:
    """RELION's spelling of a point group (``c2`` -> ``C2``, ``I`` -> ``I2``); ValueError if
    it is not one credgui can symmetrise with."""
    s = name.strip().upper()
    if s == "I":
        s = "I2"
    if re.fullmatch(r"[CD][1-9][0-9]*", s) or s in _GEN:
        return s
    raise ValueError(
        f"point group {name!r} is not supported (Cn, Dn, T, O, I, I1-I4; improper groups are not "
        "used for auto-refinement)"
    )


@lru_cache(maxsize=32)
def group_matrices(name: str) -> tuple[np.ndarray, ...]:
    """The rotation matrices (3x3, (x, y, z)) of point group ``name``, identity first."""
    g = normalise_group(name)
    if g[0] in "CD" and g[1:].isdigit():
        n = int(g[1:])
        gens = [(n, (0.0, 0.0, 1.0))] if n > 1 else []
        if g[0] == "D":
            gens.append((2, (1.0, 0.0, 0.0)))
        expected = n * (2 if g[0] == "D" else 1)
    else:
        gens = _GEN[g]
        expected = _ORDER[g]
    mats = [np.eye(3)]
    gmats = [_axis_rotation(o, a) for o, a in gens]
    frontier = list(mats)
    while frontier:
        new = []
        for m in frontier:
            for gm in gmats:
                c = gm @ m
                if not any(np.abs(c - e).max() < 1e-4 for e in mats):
                    mats.append(c)
                    new.append(c)
        frontier = new
        if len(mats) > expected:
            break
    if len(mats) != expected:  # a wrong axis table would show here, not as a wrong map
        raise RuntimeError(f"point group {g}: {len(mats)} elements generated, {expected} expected")
    # re-orthonormalise (the generators' axes are given to 7-10 digits)
    out = []
    for m in mats:
        u, _, vt = np.linalg.svd(m)
        out.append(u @ vt)
    return tuple(out)


def symmetrise(volume: np.ndarray, group: str, order: int = 1) -> np.ndarray:
    """The average of ``volume`` (z, y, x) over the rotations of ``group`` about the box centre
    ``n // 2``, interpolated with ``scipy.ndimage.map_coordinates`` (``order`` 1: trilinear).
    Each voxel averages the rotations whose source lies inside the box, so the result is
    exactly group-averaged inside the inscribed sphere and never pulls in zeros from outside.
    C1 returns the input unchanged. float32 out."""
    mats = group_matrices(group)
    vol = np.asarray(volume, dtype=np.float32)
    if len(mats) == 1:
        return vol
    from scipy import ndimage  # lazy: the hook's start-up

    n0, n1, n2 = vol.shape
    src = ndimage.spline_filter(vol, order=order) if order > 1 else vol
    acc = np.zeros(vol.shape, np.float64)
    cnt = np.zeros(vol.shape, np.int32)
    cz, cy, cx = n0 // 2, n1 // 2, n2 // 2
    x = (np.arange(n2, dtype=np.float32) - cx)
    y = (np.arange(n1, dtype=np.float32) - cy)
    step = max(1, (1 << 22) // (n1 * n2))  # ~4 M points per slab
    for z0 in range(0, n0, step):
        zs = np.arange(z0, min(n0, z0 + step), dtype=np.float32) - cz
        Z, Y, X = np.meshgrid(zs, y, x, indexing="ij")
        pts = np.stack([X.ravel(), Y.ravel(), Z.ravel()])  # (x, y, z)
        del Z, Y, X
        sl = slice(z0, z0 + len(zs))
        for m in mats:
            r = m.astype(np.float32) @ pts
            coords = np.stack([r[2] + cz, r[1] + cy, r[0] + cx])
            inside = ((coords[0] >= 0) & (coords[0] <= n0 - 1) & (coords[1] >= 0) & (coords[1] <= n1 - 1)
                      & (coords[2] >= 0) & (coords[2] <= n2 - 1))
            vals = ndimage.map_coordinates(src, coords, order=order, mode="nearest", prefilter=False)
            acc[sl] += np.where(inside, vals, 0.0).reshape(acc[sl].shape)
            cnt[sl] += inside.reshape(cnt[sl].shape)
    return (acc / np.maximum(cnt, 1)).astype(np.float32)
