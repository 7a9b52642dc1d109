"""``credgui-reconstruct`` end to end: CW-RED on a real RELION STAR, and refusal of bad input.

The hook runs as RELION runs it (a subprocess, the STAR path as its only argument); denoisers
come from ``tests/recon/plugins`` through ``$CREDGUI_PLUGIN_PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from credgui.jobs.launch import hook_executable
from credgui.recon.schedule import nominal_resolution
from credgui.relion.protocol import read_call
from credgui.relion.star import format_star, read_star
from tests.recon._inputs import ROOT, make_arrays, write_inputs

PLUGINS = Path(__file__).parent / "plugins"
ARRAY_KEYS = ("rlnExtReconsDataReal", "rlnExtReconsDataImag", "rlnExtReconsWeight")


def _run_hook(star: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CREDGUI_CONFIG"}
    env["CREDGUI_PLUGIN_PATH"] = str(PLUGINS)
    return subprocess.run([hook_executable(), str(star)], cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=120)


def _records(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "credgui_hook.jsonl").read_text().splitlines()]


def _copy_real_call(src_job: Path, job: Path, star_name: str) -> Path:
    """One hook call of the tiny run copied into ``job`` (arrays, STAR with absolute paths, the
    previous iteration's model STAR for the pixel size)."""
    job.mkdir(parents=True)
    blocks = read_star(src_job / star_name)
    general = blocks["external_reconstruct_general"]
    for key in ARRAY_KEYS:
        name = Path(general[key][0]).name
        shutil.copy(src_job / name, job / name)
        general[key] = [str(job / name)]
    root = star_name[: -len("_external_reconstruct.star")]
    general["rlnExtReconsResult"] = [str(job / f"{root}_external_reconstruct.mrc")]
    general.pop("rlnExtReconsResultStarfile", None)
    star = job / star_name
    star.write_text(format_star(blocks, loops={"external_reconstruct_tau2"}))
    it = int(root.split("_it")[1][:3])
    shutil.copy(src_job / f"run_it{it - 1:03d}_half1_model.star", job)
    return star


@pytest.mark.relion
def test_cwred_call_on_a_real_relion_star(tiny_refine_job, tmp_path):
    stars = sorted(tiny_refine_job.glob("run_it*_half1_class001_external_reconstruct.star"))
    star_name = stars[-1].name
    job = tmp_path / "job"
    star = _copy_real_call(tiny_refine_job, job, star_name)
    # a denoiser at 2.8 A/voxel (the map is 3.5 A/px: resampled 40 -> 50), halving the map;
    # a ramp that gives lambda = lambda_max at this run's resolution; pixel size from model.star
    log = tmp_path / "denoiser.log"
    (job / "credgui.toml").write_text(
        'denoiser = "test-scale"\nlambda_low_res = 100.0\nlambda_high_res = 50.0\nlambda_max = 0.8\n'
        'keep_inputs = true\n'  # the same call is run again below
        f'[denoiser_options]\nscale = 0.5\nvoxel_size = 2.8\nlog = "{log}"\n')
    proc = _run_hook(star, tmp_path)
    assert proc.returncode == 0, proc.stderr
    call = read_call(star)
    result = mrcfile.read(call.result)
    assert result.shape == (40, 40, 40) and np.isfinite(result).all()
    denoised_path = call.output_path("credgui_denoised.mrc")
    with mrcfile.open(denoised_path) as mrc:
        denoised = mrc.data.copy()
        assert float(mrc.voxel_size.x) == pytest.approx(3.5)
    unreg = mrcfile.read(call.output_path("credgui_unreg.mrc"))
    # f = 0.5 x on the standardised map: f(x~) = mean + 0.5 (x~ - mean), seen through a 40 -> 50 -> 40 resampling
    expected = unreg.mean() + 0.5 * (unreg - unreg.mean())
    assert np.corrcoef(denoised.ravel(), expected.ravel())[0, 1] > 0.99
    shape, mean, std = log.read_text().split()
    assert int(shape) == 50 and abs(float(mean)) < 1e-4 and float(std) == pytest.approx(1.0, abs=1e-4)
    rec = _records(job)[-1]
    resolution = nominal_resolution(call.fsc, 3.5, 40)
    assert rec["status"] == "ok" and rec["denoiser"] == "test-scale" and rec["pixel_size"] == 3.5
    # lambda follows the worse of the STAR's FSC crossing and RELION's own current resolution
    assert rec["fsc_resolution"] == pytest.approx(resolution)
    relion_res = float(read_star(job / f"run_it{call.iteration - 1:03d}_half1_model.star")["model_general"][
        "rlnCurrentResolution"][0])
    assert rec["relion_resolution"] == pytest.approx(relion_res)
    assert rec["nominal_resolution"] == pytest.approx(max(resolution, relion_res))
    assert rec["resolution_source"] == ("fsc" if resolution >= relion_res else "relion")
    assert rec["lambda"] == pytest.approx(0.8) and rec["worker"] is False
    assert set(rec["timings"]) == {"read", "unreg", "denoise", "update", "gridding", "write", "total"}
    # the same call with lambda = 0 (denoiser none) differs: the denoiser term entered the update
    (job / "credgui.toml").write_text('denoiser = "none"\n')
    plain_out = tmp_path / "plain.mrc"
    blocks = read_star(star)
    blocks["external_reconstruct_general"]["rlnExtReconsResult"] = [str(plain_out)]
    star.write_text(format_star(blocks, loops={"external_reconstruct_tau2"}))
    assert _run_hook(star, tmp_path).returncode == 0
    plain = mrcfile.read(plain_out)
    assert not np.allclose(plain, result)
    assert np.corrcoef(plain.ravel(), result.ravel())[0, 1] > 0.9


@pytest.fixture
def synthetic_job(tmp_path):
    job = tmp_path / "job"
    star = write_inputs(job, make_arrays(24, 2.0, current=20))
    return job, star


def test_lambda_zero_with_a_denoiser_equals_no_denoiser(synthetic_job, tmp_path):
    job, star = synthetic_job
    (job / "credgui.toml").write_text('pixel_size = 2.0\ndenoiser = "none"\nkeep_inputs = true\n')
    assert _run_hook(star, tmp_path).returncode == 0
    plain = mrcfile.read(read_call(star).result)
    # FSC crossing at ~6 shells -> 24 * 2 / 6 = 8 A, worse than lambda_low_res = 5 A: lambda = 0
    (job / "credgui.toml").write_text('pixel_size = 2.0\ndenoiser = "test-scale"\nlambda_low_res = 5.0\n'
                                      "lambda_high_res = 3.0\n[denoiser_options]\nscale = 0.0\n")
    proc = _run_hook(star, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = _records(job)[-1]
    assert rec["lambda"] == 0.0 and rec["nominal_resolution"] > 5.0
    assert np.array_equal(mrcfile.read(read_call(star).result), plain)
    # the denoised map is written even at lambda = 0 (f = 0: the standardised map's mean)
    denoised = mrcfile.read(read_call(star).output_path("credgui_denoised.mrc"))
    assert np.ptp(denoised) < 1e-5 * max(1.0, abs(float(denoised.mean())))


def test_unknown_pixel_size_with_a_denoiser_is_an_error_naming_the_config(synthetic_job, tmp_path):
    job, star = synthetic_job
    (job / "credgui.toml").write_text('denoiser = "test-scale"\n')
    proc = _run_hook(star, tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(job / "credgui.toml") in lines[0] and "pixel_size" in lines[0]
    assert not read_call(star).result.exists()
    # denoiser none needs no pixel size
    (job / "credgui.toml").write_text('denoiser = "none"\n')
    assert _run_hook(star, tmp_path).returncode == 0


def test_keep_inputs_false_deletes_the_arrays_after_success_only(synthetic_job, tmp_path):
    job, star = synthetic_job
    call = read_call(star)
    (job / "credgui.toml").write_text('keep_inputs = false\ndenoiser = "no-such-denoiser"\npixel_size = 2.0\n')
    proc = _run_hook(star, tmp_path)
    assert proc.returncode != 0 and "no-such-denoiser" in proc.stderr
    assert call.data_real.exists() and call.weight.exists()
    (job / "credgui.toml").write_text('keep_inputs = false\ndenoiser = "none"\n')
    assert _run_hook(star, tmp_path).returncode == 0
    assert call.result.exists()
    assert not (call.data_real.exists() or call.data_imag.exists() or call.weight.exists())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_shape(path: Path) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((48, 48, 24), np.float32))


def _nan(path: Path) -> None:
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.data[3, 4, 5] = np.nan


def _drop_label(path: Path) -> None:
    path.write_text("\n".join(l for l in path.read_text().splitlines() if "rlnCurrentImageSize" not in l) + "\n")


@pytest.mark.parametrize("which,corrupt,problem", [
    ("data_real", _truncate, "not a readable MRC"),
    ("weight", _wrong_shape, "shape"),
    ("data_imag", _nan, "NaN"),
    ("star", _drop_label, "_rlnCurrentImageSize"),
])
def test_corrupt_input_exits_non_zero_naming_the_file(synthetic_job, tmp_path, which, corrupt, problem):
    job, star = synthetic_job
    (job / "credgui.toml").write_text('pixel_size = 2.0\ndenoiser = "none"\n')
    call = read_call(star)
    target = star if which == "star" else job / f"{ROOT}_external_reconstruct_{which}.mrc"
    corrupt(target)
    proc = _run_hook(star, tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(target) in lines[0] and problem in lines[0]
    assert not call.result.exists()
    assert not list(job.glob(".*.tmp"))
    assert _records(job)[-1]["status"] == "error"


@pytest.mark.parametrize("root, source", [("run_it001_half1_class001", "first iteration"),
                                          ("run_it007_class001", "final map")])
def test_no_prior_at_iteration_1_nor_on_the_final_joined_map(tmp_path, root, source):
    """A ramp that would give lambda 1 at this FSC (8 A): still 0 at iteration 1 and on the
    joined final map; f(x~) is written for inspection, the result equals RELION's prior alone."""
    job = tmp_path / "job"
    star = write_inputs(job, make_arrays(24, 2.0, current=20), root=root)
    (job / "credgui.toml").write_text('pixel_size = 2.0\ndenoiser = "none"\nkeep_inputs = true\n')
    assert _run_hook(star, tmp_path).returncode == 0
    plain = mrcfile.read(read_call(star).result)
    (job / "credgui.toml").write_text('pixel_size = 2.0\ndenoiser = "test-scale"\nlambda_low_res = 50.0\n'
                                      "lambda_high_res = 20.0\n[denoiser_options]\nscale = 0.5\n")
    proc = _run_hook(star, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = _records(job)[-1]
    assert rec["lambda"] == 0.0 and rec["nominal_resolution"] is None and rec["resolution_source"] == source
    assert rec["fsc_resolution"] == pytest.approx(nominal_resolution(read_call(star).fsc, 2.0, 24))
    assert np.array_equal(mrcfile.read(read_call(star).result), plain)
    assert read_call(star).output_path("credgui_denoised.mrc").is_file()


def test_by_default_the_arrays_go_after_a_successful_call_and_keep_inputs_keeps_them(synthetic_job, tmp_path):
    job, star = synthetic_job
    call = read_call(star)
    (job / "credgui.toml").write_text('denoiser = "none"\nkeep_inputs = true\n')
    assert _run_hook(star, tmp_path).returncode == 0
    assert call.data_real.exists() and call.data_imag.exists() and call.weight.exists()
    (job / "credgui.toml").write_text('denoiser = "none"\n')  # keep_inputs left at its default
    assert _run_hook(star, tmp_path).returncode == 0
    assert call.result.exists()
    assert not (call.data_real.exists() or call.data_imag.exists() or call.weight.exists())


def test_relion_4_pixel_size_in_the_star_wins(synthetic_job, tmp_path):
    """RELION 4.0/5.0 write _rlnPixelSize (and _rlnParticleDiameter) into the hook STAR."""
    job, star = synthetic_job
    text = star.read_text().replace("_rlnCurrentImageSize", "_rlnPixelSize 1.75\n_rlnParticleDiameter 40\n"
                                    "_rlnCurrentImageSize")
    star.write_text(text)
    (job / "credgui.toml").write_text('denoiser = "test-scale"\npixel_size = 2.0\n')
    proc = _run_hook(star, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _records(job)[-1]["pixel_size"] == 1.75
    with mrcfile.open(read_call(star).result) as mrc:
        assert abs(float(mrc.voxel_size.x) - 1.75) < 1e-5
