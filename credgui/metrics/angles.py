"""Rotations from RELION's Euler angles, and the angle between two orientations.

RELION (and XMIPP) use ZYZ Euler angles (rot, tilt, psi) in degrees; the matrix is that of
RELION 3.1 ``src/euler.cpp`` ``Euler_angles2matrix``: A = R_z(psi) R_y(tilt) R_z(rot) with
the passive convention (rows map the reference frame onto the particle's), i.e.

    A = [[ cg cb ca - sg sa,   cg cb sa + sg ca,  -cg sb],
         [-sg cb ca - cg sa,  -sg cb sa + cg ca,   sg sb],
         [ sb ca,              sb sa,              cb   ]]

with a = rot, b = tilt, g = psi. A projection direction of the map is the third row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["euler_to_matrix", "angular_error"]


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
