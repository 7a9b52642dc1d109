"""The honest-resolution check (credgui.metrics.prior_check): it warns when the denoiser makes the
two half-references agree beyond what the data support, and not otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.metrics.filters import lowpass
from credgui.metrics.prior_check import prior_check, prior_check_files
from credgui.relion.mrc import write_mrc_atomic

BOX, PIXEL = 40, 3.5


def _halves(seed: int, noise: float):
    """Two x~: one signal (14 A) plus independent noise per half."""
    rng = np.random.default_rng(seed)
    signal = lowpass(rng.standard_normal((BOX,) * 3).astype(np.float32), PIXEL, 14.0)
    signal /= signal.std()
    return signal, tuple(signal + noise * rng.standard_normal(signal.shape).astype(np.float32) for _ in (1, 2))


def test_features_invented_in_both_halves_are_caught():
    signal, unreg = _halves(0, noise=3.0)
    rng = np.random.default_rng(1)
    # a denoiser that adds the same detail (not in the data, out to 8 A) to both halves
    invented = lowpass(rng.standard_normal(signal.shape).astype(np.float32), PIXEL, 8.0)
    invented *= 1.5 / invented.std()
    denoised = tuple(lowpass(u, PIXEL, 14.0) + invented for u in unreg)
    check = prior_check(unreg, denoised, PIXEL, lambda_=0.8)
    assert check.warn, check.text()
    assert check.shells_ahead > 2 and check.added_fsc > 0.2
    assert check.prior_resolution < check.data_resolution
    assert "optimistic" in check.text()
    # the same maps with the prior switched off: nothing reached the references
    off = prior_check(unreg, denoised, PIXEL, lambda_=0.0)
    assert not off.warn and off.shells_ahead == check.shells_ahead


def test_a_denoiser_that_only_filters_adds_nothing():
    """A per-shell filter (what eq. 11's Gaussian prior is, nearly) leaves the FSC where it is."""
    _, unreg = _halves(2, noise=3.0)
    denoised = tuple(lowpass(u, PIXEL, 10.0) + 0.3 * u for u in unreg)
    check = prior_check(unreg, denoised, PIXEL, lambda_=1.0)
    assert not check.warn, check.text()
    assert abs(check.shells_ahead) < 0.5


def test_files_and_mismatched_boxes(tmp_path):
    _, unreg = _halves(3, noise=1.0)
    paths = []
    for name, vol in zip(("u1", "u2", "d1", "d2"), (*unreg, *unreg)):
        paths.append(tmp_path / f"{name}.mrc")
        write_mrc_atomic(paths[-1], vol, voxel_size=PIXEL)
    check = prior_check_files(tuple(paths[:2]), tuple(paths[2:]), PIXEL, lambda_=1.0)
    assert check.shells_ahead == pytest.approx(0.0, abs=1e-6) and not check.warn
    with pytest.raises(ValueError, match="boxes must match"):
        prior_check(unreg, (unreg[0][:-2, :-2, :-2], unreg[1][:-2, :-2, :-2]), PIXEL)
