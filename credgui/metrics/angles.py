"""Rotations from RELION's Euler angles, and the angle between two orientations.

RELION (and XMIPP) use ZYZ Euler angles (rot, tilt, psi) in degrees; the matrix is that of
RELION 3.1 ``src/euler.cpp`` ``Euler_angles2matrix``: A = R_z(psi) R_y(tilt) R_z(rot) with
the passive convention (rows map the reference frame onto the particle's), i.e.

    A = [[ cg cb ca - sg sa,   cg cb sa + sg ca,  -cg sb],
         [-sg cb ca - cg sa,  -sg cb sa + cg ca,   sg sb],
         [ sb ca,              sb sa,              cb   ]]

with a = rot, b = tilt, g = psi. A projection direction of the map is the third row.

Angular errors of a refinement against the true poses (``angular_errors``) pair particles by
ONE rule, ``particle_key``: the image index and the stack's file name,
``"000012@data/particles.mrcs"`` -> ``(12, "particles.mrcs")``. Why not the raw
``rlnImageName``: ``credgui demo`` rewrites the stack paths relative to its project
(``data/particles.mrcs``) while ``true_poses.star`` names ``particles.mrcs``; zero padding differs
between writers too. Why not the index alone: a STAR may list several stacks. Fallback: when no
key matches and each file names a single stack, particles pair by index alone (a renamed stack).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from credgui.errors import InputError

__all__ = [
    "ANGLE_BIN_DEG",
    "euler_to_matrix",
    "angular_error",
    "particle_key",
    "read_poses",
    "angular_errors",
    "angle_summary",
]

ANGLE_BIN_DEG = 0.5
"""Histogram bin width (degrees) of ``angle_summary``'s angular-error distribution (0 to 180)."""

ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION rotation matrices for Euler angles (degrees), broadcast together.

    Returns float64 of shape ``broadcast_shape + (3, 3)``.
    """
    a, b, g = np.broadcast_arrays(
        *(np.radians(np.asarray(v, dtype=np.float64)) for v in (rot, tilt, psi))
    )
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cb * ca - sg * sa
    m[..., 0, 1] = cg * cb * sa + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cb * ca - cg * sa
    m[..., 1, 1] = -sg * cb * sa + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sb * ca
    m[..., 2, 1] = sb * sa
    m[..., 2, 2] = cb
    return m


def angular_error(rot1, tilt1, psi1, rot2, tilt2, psi2) -> np.ndarray:
    """Angle (degrees, 0..180) of the rotation R1 R2^T between two sets of RELION orientations.

    Vectorised over broadcastable inputs; returns an array (0-d for scalars). Both sets must
    be in the same reference frame (no handedness or symmetry search).
    """
    r1 = euler_to_matrix(rot1, tilt1, psi1)
    r2 = euler_to_matrix(rot2, tilt2, psi2)
    m = np.einsum("...ij,...kj->...ik", r1, r2)  # R1 R2^T
    # angle = atan2(sin, cos): accurate near 0 and 180 deg, unlike arccos of the trace alone
    cos_angle = (m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2] - 1.0) / 2.0
    sin_angle = 0.5 * np.sqrt(
        (m[..., 2, 1] - m[..., 1, 2]) ** 2
        + (m[..., 0, 2] - m[..., 2, 0]) ** 2
        + (m[..., 1, 0] - m[..., 0, 1]) ** 2
    )
    return np.degrees(np.arctan2(sin_angle, cos_angle))


def particle_key(image_name: str) -> tuple[int, str]:
    """(image index, stack file name) of a RELION ``rlnImageName`` ``N@path/stack.mrcs``: the
    particle-matching rule (see the module docstring). ValueError when it is not ``N@STACK``."""
    index, sep, stack = str(image_name).partition("@")
    if not sep or not index.strip().isdigit():
        raise ValueError(f"image name {image_name!r} is not N@STACK")
    return int(index), os.path.basename(stack.strip())


def read_poses(star: str | Path) -> dict[tuple[int, str], tuple[float, float, float]]:
    """{particle_key: (rot, tilt, psi) degrees} of a particle STAR (RELION data STAR or the
    simulator's true_poses.star): its ``data_particles`` block, else the first block with image
    names and angles. Read with credgui's pure-Python reader, not starfile/pandas: it yields the
    GIL every few ms where pandas' C parser holds it (measured: a 160 ms stall of the GUI thread
    for a 300-particle data.star). InputError naming the file when a column is missing or bad."""
    from credgui.relion.star import read_star

    blocks = read_star(star)
    ordered = ([blocks["particles"]] if "particles" in blocks else []) + list(blocks.values())
    block = next((b for b in ordered if "rlnImageName" in b and all(k in b for k in ANGLE_LABELS)), None)
    if block is None:
        raise InputError(star, "no data_particles block with _rlnImageName and _rlnAngleRot/Tilt/Psi")
    try:
        keys = [particle_key(n) for n in block["rlnImageName"]]
        angles = [tuple(float(v) for v in row) for row in zip(*(block[k] for k in ANGLE_LABELS))]
    except ValueError as exc:
        raise InputError(star, str(exc).splitlines()[0]) from None
    return dict(zip(keys, angles))


def angular_errors(refined_star: str | Path, true_star: str | Path) -> np.ndarray:
    """Per-particle angular error (degrees, 0..180) between the orientations of two particle
    STARs (a refinement's ``run_itNNN_data.star`` and the true poses, or two refinements),
    particles paired by ``particle_key`` (index-only fallback: module docstring). float64, in
    ``refined_star``'s order. InputError when no particle pairs up."""
    refined = read_poses(refined_star)
    truth = read_poses(true_star)
    common = [k for k in refined if k in truth]
    if not common and len({k[1] for k in refined}) == 1 and len({k[1] for k in truth}) == 1:
        by_index = {k[0]: v for k, v in truth.items()}
        pairs = [(refined[k], by_index[k[0]]) for k in refined if k[0] in by_index]
    else:
        pairs = [(refined[k], truth[k]) for k in common]
    if not pairs:
        raise InputError(refined_star, f"no particle matches one in {true_star} by image index and stack name")
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    return np.asarray(angular_error(a[:, 0], a[:, 1], a[:, 2], b[:, 0], b[:, 1], b[:, 2]), dtype=np.float64)


def angle_summary(errors: np.ndarray) -> dict[str, Any]:
    """The run summary of angular errors (degrees): count, median, mean, 90th percentile, the
    fraction over 10 degrees and a 0.5-degree histogram (0..180, trailing empty bins left out)."""
    e = np.asarray(errors, dtype=np.float64)
    edges = np.arange(0.0, 180.0 + ANGLE_BIN_DEG / 2, ANGLE_BIN_DEG)
    counts, _ = np.histogram(e, bins=edges)
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    return {
        "n": int(e.size),
        "median_deg": float(np.median(e)),
        "mean_deg": float(np.mean(e)),
        "p90_deg": float(np.percentile(e, 90)),
        "fraction_over_10_deg": float(np.mean(e > 10.0)),
        "hist_bin_deg": ANGLE_BIN_DEG,
        "hist_counts": [int(c) for c in counts[:last]],
    }
