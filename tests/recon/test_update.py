"""Eq. (11) and eq. (17) updates (credgui.recon.update) on small synthetic B, K."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.recon.fourier import prior_weight
from credgui.recon.gridding import gridded_map, window_real
from credgui.recon.update import (
    cwred_closed_form,
    cwred_numerator,
    denoise_map,
    denoiser_prior_weight,
    padded_fourier_from_map,
    unregularised_fourier,
)
from tests.recon._inputs import make_arrays

BOX, PAD = 24, 2.0


@pytest.fixture(scope="module")
def arrays():
    return make_arrays(BOX, PAD, current=20)


def _prior(a, tau2=None):
    tau2 = a["tau2"] if tau2 is None else tau2
    return prior_weight(a["weight"], tau2, a["current"], PAD, 1.0)


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_lambda_zero_is_eq11_exactly(arrays):
    a = arrays
    prior = _prior(a)
    tau_inv = denoiser_prior_weight(a["data"].shape, a["tau2"], a["current"], PAD, 1.0)
    fx = np.ones_like(a["data"])  # anything: lambda = 0 must ignore it
    num = cwred_numerator(a["data"], tau_inv, fx, 0.0)
    ref = gridded_map(a["data"], a["weight"] + prior, BOX, a["current"], PAD)
    got = gridded_map(num, a["weight"] + prior, BOX, a["current"], PAD)
    assert np.array_equal(got, ref)


def test_denoiser_term_is_tau2_prior_where_tau2_positive(arrays):
    a = arrays
    tau2 = a["tau2"].copy()
    tau2[3] = 0.0  # an empty shell inside the data region
    prior = _prior(a, tau2)
    tau_inv = denoiser_prior_weight(a["data"].shape, tau2, a["current"], PAD, 1.0)
    pos = tau_inv > 0
    np.testing.assert_allclose(tau_inv[pos], prior[pos], rtol=1e-6)
    # where tau2 = 0 RELION's prior pulls to zero; eq. (17) adds no denoiser term there
    assert ((prior > 0) & ~pos).any()


def test_map_to_padded_fourier_inverts_the_window(arrays):
    """F[x~] built from the real-space x~ equals the windowed B/K on the padded grid."""
    a = arrays
    p = a["data"].shape[0]
    # a map supported in the box: its padded FT, windowed and mapped back, is unchanged
    vol = a["truth"]
    sel = (np.arange(BOX) - BOX // 2) % p
    padded = np.zeros((p, p, p), np.float32)
    padded[np.ix_(sel, sel, sel)] = vol
    f = np.fft.rfftn(padded).astype(np.complex64)
    back = padded_fourier_from_map(window_real(f, BOX, PAD, soft_edge=False), p, PAD)
    assert np.abs(back - f).max() < 1e-4 * np.abs(f).max()


def test_zero_denoiser_output_shrinks_as_eq17(arrays):
    """f(x~) = 0: x = B / (K + tau^-2) = x~ K / (K + tau^-2), whatever lambda."""
    a = arrays
    prior = _prior(a)
    tau_inv = denoiser_prior_weight(a["data"].shape, a["tau2"], a["current"], PAD, 1.0)
    x_tilde = unregularised_fourier(a["data"], a["weight"], a["current"], PAD)
    zero = np.zeros_like(a["data"])
    for lam in (0.0, 0.5, 1.0):
        x = cwred_closed_form(a["data"], a["weight"], prior, tau_inv, zero, lam)
        ok = a["weight"] > 1e-3 * a["weight"][a["weight"] > 0].mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = x_tilde * (a["weight"] / (a["weight"] + prior))
        np.testing.assert_allclose(x[ok], expected[ok], rtol=1e-4, atol=1e-6 * np.abs(expected[ok]).max())
    # and the shrinkage is real: |x| < |x~| wherever the prior acts
    acts = ok & (prior > 0.1 * a["weight"])
    assert acts.any() and (np.abs(x[acts]) < np.abs(x_tilde[acts])).all()


def test_identity_denoiser_is_a_fixed_point_of_eq17(arrays):
    """f(x~) = x~ and lambda = 1: (B + tau^-2 B/K) / (K + tau^-2) = B/K, i.e. no shrinkage."""
    a = arrays
    prior = _prior(a)
    tau_inv = denoiser_prior_weight(a["data"].shape, a["tau2"], a["current"], PAD, 1.0)
    x_tilde = unregularised_fourier(a["data"], a["weight"], a["current"], PAD)
    x = cwred_closed_form(a["data"], a["weight"], prior, tau_inv, x_tilde, 1.0)
    ok = (a["weight"] > 1e-3 * a["weight"][a["weight"] > 0].mean()) & (tau_inv > 0)
    np.testing.assert_allclose(x[ok], x_tilde[ok], rtol=1e-4, atol=1e-6 * np.abs(x_tilde).max())


def _hook_path(a, tau2, lam, denoiser):
    """The hook's real path: x~ -> f -> F -> numerator -> gridding (no files)."""
    prior = _prior(a, tau2)
    x_real = window_real(unregularised_fourier(a["data"], a["weight"], a["current"], PAD), BOX, PAD, soft_edge=False)
    fx = padded_fourier_from_map(denoise_map(x_real, denoiser, 1.0, None), a["data"].shape[0], PAD)
    tau_inv = denoiser_prior_weight(a["data"].shape, tau2, a["current"], PAD, 1.0)
    num = cwred_numerator(a["data"], tau_inv, fx, lam)
    return gridded_map(num, a["weight"] + prior, BOX, a["current"], PAD), x_real


def test_identity_denoiser_at_high_tau2_matches_lambda_zero(arrays):
    a = arrays
    tau2 = a["tau2"] * 1e6  # weak prior: eq. (17) with f = identity ~ eq. (11)
    mixed, _ = _hook_path(a, tau2, 1.0, lambda v: v)
    plain, _ = _hook_path(a, tau2, 0.0, lambda v: v)
    assert _corr(mixed, plain) > 0.9999
    assert np.linalg.norm(mixed - plain) / np.linalg.norm(plain) < 0.01


def test_identity_denoiser_undoes_the_prior_shrinkage(arrays):
    """With a strong prior, lambda = 1 and f = identity pull the result back to x~."""
    a = arrays
    tau2 = a["tau2"] * 1e-2
    mixed, x_real = _hook_path(a, tau2, 1.0, lambda v: v)
    plain, _ = _hook_path(a, tau2, 0.0, lambda v: v)
    assert np.linalg.norm(mixed - x_real) < 0.5 * np.linalg.norm(plain - x_real)


def test_denoise_map_standardises_resamples_and_undoes_both():
    rng = np.random.default_rng(1)
    vol = (5.0 + 3.0 * rng.standard_normal((32, 32, 32))).astype(np.float32)
    seen = {}

    def spy(v):
        seen["shape"], seen["mean"], seen["std"] = v.shape, float(v.mean()), float(v.std())
        return v

    out = denoise_map(vol, spy, 1.5, 2.0)  # 32 * 1.5 / 2.0 = 24
    assert seen["shape"] == (24, 24, 24)
    assert abs(seen["mean"]) < 1e-5 and seen["std"] == pytest.approx(1.0, rel=1e-5)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert float(out.mean()) == pytest.approx(float(vol.mean()), rel=1e-4)
    zeros = denoise_map(vol, lambda v: np.zeros_like(v), 1.5, None)
    np.testing.assert_allclose(zeros, np.full_like(vol, vol.mean()), rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        denoise_map(vol, lambda v: v[:-1], 1.5, None)
    with pytest.raises(ValueError, match="NaN"):
        denoise_map(vol, lambda v: v * np.nan, 1.5, None)
