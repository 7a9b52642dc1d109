"""RELION Euler angles and angular error (credgui.metrics.angles)."""

import numpy as np
import pytest

from credgui.metrics.angles import angular_error, euler_to_matrix

# Hand-computed from RELION 3.1 src/euler.cpp Euler_angles2matrix(alpha=rot, beta=tilt, gamma=psi)
HAND = [
    ((0, 0, 0), np.eye(3)),
    ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
    ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((90, 90, 90), [[-1, 0, 0], [0, 0, 1], [0, 1, 0]]),
    ((0, 180, 0), [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]),
]


@pytest.mark.parametrize("angles,expected", HAND)
def test_euler_matrix_matches_relion_hand_computed(angles, expected):
    np.testing.assert_allclose(euler_to_matrix(*angles), expected, atol=1e-12)


def test_euler_matrix_general_case_against_formula():
    # rot=30, tilt=60, psi=45, RELION's formula written out with the numbers
    ca, sa = np.cos(np.pi / 6), np.sin(np.pi / 6)
    cb, sb = np.cos(np.pi / 3), np.sin(np.pi / 3)
    cg, sg = np.cos(np.pi / 4), np.sin(np.pi / 4)
    expected = np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )
    np.testing.assert_allclose(euler_to_matrix(30, 60, 45), expected, atol=1e-12)
    # the projection direction (third row) is (sin tilt cos rot, sin tilt sin rot, cos tilt)
    np.testing.assert_allclose(euler_to_matrix(30, 60, 45)[2], [sb * ca, sb * sa, cb])


def test_euler_matrices_are_rotations_and_vectorised():
    rng = np.random.default_rng(0)
    rot, tilt, psi = rng.uniform(-180, 180, (3, 50))
    m = euler_to_matrix(rot, tilt, psi)
    assert m.shape == (50, 3, 3)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


def test_angular_error_of_identical_angles_is_zero():
    rng = np.random.default_rng(1)
    rot, tilt, psi = rng.uniform(-180, 180, (3, 100))
    err = angular_error(rot, tilt, psi, rot, tilt, psi)
    assert err.shape == (100,)
    np.testing.assert_allclose(err, 0.0, atol=1e-6)


def test_equivalent_euler_triplets_have_zero_error():
    # (rot, tilt, psi) and (rot + 180, -tilt, psi + 180) are the same rotation
    rng = np.random.default_rng(2)
    rot, tilt, psi = rng.uniform(-180, 180, (3, 20))
    np.testing.assert_allclose(
        angular_error(rot, tilt, psi, rot + 180, -tilt, psi + 180), 0.0, atol=1e-6
    )


@pytest.mark.parametrize("delta", [0.5, 10.0, 90.0, 179.0])
def test_angular_error_of_known_rotations(delta):
    rng = np.random.default_rng(3)
    rot, tilt, psi = rng.uniform(-180, 180, (3, 30))
    tilt = np.abs(tilt) % 180
    # psi and rot each add a rotation about z (left and right factor): the error is delta
    np.testing.assert_allclose(angular_error(rot, tilt, psi, rot, tilt, psi + delta), delta, atol=1e-6)
    np.testing.assert_allclose(angular_error(rot, tilt, psi, rot + delta, tilt, psi), delta, atol=1e-6)
    # a tilt change alone with rot = psi = 0 is a rotation about y by delta
    assert angular_error(0, 20, 0, 0, 20 + delta, 0) == pytest.approx(delta, abs=1e-6)


def test_angular_error_matches_axis_angle_of_composed_rotation():
    """R2 = Q R1 with Q a known axis-angle rotation: the error is Q's angle."""
    rng = np.random.default_rng(4)
    angle = 37.0
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(angle)
    q = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    r1 = euler_to_matrix(25, 70, -40)
    r2 = q @ r1
    # recover RELION Euler angles of r2 (tilt in (0, 180): rows 2 and column 2 determine them)
    tilt2 = np.degrees(np.arccos(r2[2, 2]))
    rot2 = np.degrees(np.arctan2(r2[2, 1], r2[2, 0]))
    psi2 = np.degrees(np.arctan2(r2[1, 2], -r2[0, 2]))
    np.testing.assert_allclose(euler_to_matrix(rot2, tilt2, psi2), r2, atol=1e-12)
    assert angular_error(25, 70, -40, rot2, tilt2, psi2) == pytest.approx(angle, abs=1e-9)
