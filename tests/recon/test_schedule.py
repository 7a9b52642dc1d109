"""The CW-RED lambda schedule (paper section 4.3) and the FSC = 0.143 nominal resolution."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.recon.schedule import (
    lambda_for_resolution,
    nominal_resolution,
    ramp_thresholds,
)


def test_crossing_is_interpolated_between_shells():
    # drops from 0.5 at shell 4 to 0.1 at shell 5: 0.143 is reached at 4 + (0.5-0.143)/0.4
    fsc = [1, 1, 0.9, 0.7, 0.5, 0.1, 0.3, 0.0, 0.0]
    shell = 4 + (0.5 - 0.143) / 0.4
    assert nominal_resolution(fsc, 1.5, 16) == pytest.approx(16 * 1.5 / shell)


def test_first_crossing_wins_over_a_later_rise():
    fsc = [1, 0.9, 0.1, 0.9, 0.9, 0.0]
    res = nominal_resolution(fsc, 2.0, 10)
    shell = 1 + (0.9 - 0.143) / 0.8
    assert res == pytest.approx(20 / shell)


def test_exactly_at_threshold_counts_as_above():
    fsc = [1, 1, 0.143, 0.0]
    assert nominal_resolution(fsc, 1.0, 6) == pytest.approx(6 / 2.0)


@pytest.mark.parametrize("fsc", [None, [], [1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0], [1, 0.1, 0.0, 0.0],
                                 [1, np.nan, 0.5, 0]])
def test_no_crossing_gives_none(fsc):
    assert nominal_resolution(fsc, 1.0, 8) is None


def test_ramp_ends_linear_middle_and_clipping():
    assert lambda_for_resolution(10.0, 10.0, 4.5, 1.0) == 0.0
    assert lambda_for_resolution(4.5, 10.0, 4.5, 1.0) == 1.0
    assert lambda_for_resolution(7.25, 10.0, 4.5, 1.0) == pytest.approx(0.5)
    assert lambda_for_resolution(30.0, 10.0, 4.5, 1.0) == 0.0  # worse than low_res
    assert lambda_for_resolution(2.0, 10.0, 4.5, 0.6) == pytest.approx(0.6)  # clipped at lambda_max
    assert lambda_for_resolution(8.0, 12.0, 4.0, 0.5) == pytest.approx(0.25)
    assert lambda_for_resolution(None) == 0.0
    assert lambda_for_resolution(float("nan")) == 0.0
    # a degenerate ramp (ends equal or swapped) is a step at high_res, never an exception
    assert lambda_for_resolution(5.0, 5.0, 5.0, 0.7) == pytest.approx(0.7)
    assert lambda_for_resolution(5.1, 5.0, 5.0, 0.7) == 0.0
    assert lambda_for_resolution(7.0, 4.0, 6.0, 1.0) == 0.0


def test_ramp_is_monotone_over_resolutions():
    res = np.linspace(20, 2, 200)
    lam = np.array([lambda_for_resolution(r, 10.0, 4.5, 1.0) for r in res])
    assert (np.diff(lam) >= 0).all() and lam[0] == 0 and lam[-1] == 1


def test_thresholds_prefer_config_then_model_then_paper():
    assert ramp_thresholds(12.0, 5.0, 9.0, 3.0) == (12.0, 5.0)
    assert ramp_thresholds(None, None, 9.0, 3.0) == (9.0, 3.0)
    assert ramp_thresholds(None, None, None, None) == (10.0, 4.5)
    assert ramp_thresholds(None, 6.0, 9.0, None) == (9.0, 6.0)


def test_driving_resolution_takes_the_worse_and_keeps_the_prior_off_at_iteration_1_and_the_final_map():
    from credgui.recon.schedule import driving_resolution

    d = driving_resolution(9.7, 28.2, iteration=5, half=1)
    assert d.resolution == 28.2 and d.source == "relion" and d.fsc_resolution == 9.7
    d = driving_resolution(12.0, 8.0, iteration=5, half=2)
    assert d.resolution == 12.0 and d.source == "fsc"
    assert driving_resolution(None, 8.0, 3, 1).resolution == 8.0
    assert driving_resolution(9.7, None, 3, 1).source == "fsc"
    assert driving_resolution(None, None, 3, 1).resolution is None
    # no gold-standard FSC at iteration 1; the joined final map stays prior-free
    first = driving_resolution(5.0, 5.0, iteration=1, half=1)
    final = driving_resolution(5.0, 5.0, iteration=12, half=None)
    assert first.resolution is None and first.source == "first iteration"
    assert final.resolution is None and final.source == "final map"
    assert lambda_for_resolution(first.resolution, 16.0, 5.0) == 0.0


def test_relion_resolution_inf_of_iteration_0_is_unknown(tmp_path):
    """RELION writes _rlnCurrentResolution inf into run_it000_*_model.star: no number, no crash."""
    from credgui.relion.protocol import find_relion_resolution, read_call
    from tests.recon._inputs import make_arrays, write_inputs

    job = tmp_path / "job"
    star = write_inputs(job, make_arrays(24, 2.0, current=20), root="run_it001_half1_class001")
    (job / "run_it000_half1_model.star").write_text(
        "data_model_general\n\n_rlnPixelSize 2.0\n_rlnCurrentResolution inf\n")
    assert find_relion_resolution(read_call(star)) is None
    (job / "run_it000_half1_model.star").write_text(
        "data_model_general\n\n_rlnPixelSize 2.0\n_rlnCurrentResolution 28.16\n")
    assert find_relion_resolution(read_call(star))[0] == 28.16
