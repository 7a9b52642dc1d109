"""Command lines, job directories and validation (credgui.jobs.launch): no RELION run."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from credgui.config import HookConfig
from credgui.errors import InputError
from credgui.jobs import launch
from credgui.jobs.launch import (
    RefineParams,
    hook_executable,
    local_command,
    mpirun_prefix,
    next_job_dir,
    project_dir_of,
    relion_command,
    validate_params,
)


def _params(proj: Path, **kw) -> RefineParams:
    values = dict(
        particles_star=proj / "particles.star",
        initial_model=proj / "initial_model.mrc",
        job_dir=proj / "Refine3D" / "job004",
        particle_diameter=120.0,
    )
    values.update(kw)
    return RefineParams(**values)


def test_relion_command_exact_arguments(tmp_path):
    proj = tmp_path / "proj"
    p = _params(proj, auto_iter_max=3, symmetry="D2", solvent_mask=proj / "mask.mrc",
                extra_args=("--maxsig", "100"))
    assert relion_command(p) == [
        "relion_refine_mpi",
        "--o", "Refine3D/job004/run",
        "--auto_refine", "--split_random_halves",
        "--i", "particles.star",
        "--ref", "initial_model.mrc",
        "--firstiter_cc",
        "--ini_high", "30",
        "--dont_combine_weights_via_disc",
        "--pool", "3",
        "--pad", "2",
        "--ctf",
        "--particle_diameter", "120",
        "--flatten_solvent",
        "--zero_mask",
        "--solvent_mask", "mask.mrc",
        "--oversampling", "1",
        "--healpix_order", "2",
        "--auto_local_healpix_order", "4",
        "--offset_range", "5",
        "--offset_step", "2",
        "--sym", "D2",
        "--low_resol_join_halves", "40",
        "--norm", "--scale",
        "--j", "1",
        "--auto_iter_max", "3",
        "--external_reconstruct",
        "--pipeline_control", "Refine3D/job004/",
        "--maxsig", "100",
    ]


def test_relion_command_options_switch_off_and_outside_paths(tmp_path):
    outside = tmp_path / "data" / "particles.star"
    p = _params(
        tmp_path / "proj",
        particles_star=outside,
        flatten_solvent=False,
        zero_mask=False,
        ctf=False,
        absolute_greyscale=True,
        ini_high=25.5,
        threads=4,
        pad=1,
    )
    cmd = relion_command(p)
    for absent in ("--flatten_solvent", "--zero_mask", "--ctf", "--firstiter_cc", "--auto_iter_max", "--solvent_mask"):
        assert absent not in cmd
    assert cmd[cmd.index("--i") + 1] == str(outside)  # outside the project: absolute
    assert cmd[cmd.index("--ini_high") + 1] == "25.5"
    assert cmd[cmd.index("--j") + 1] == "4"
    assert cmd[cmd.index("--pad") + 1] == "1"


def test_project_dir_follows_relion_layout(tmp_path):
    assert project_dir_of(tmp_path / "p" / "Refine3D" / "job012") == tmp_path / "p"
    assert project_dir_of(tmp_path / "p" / "myrefine") == tmp_path / "p"
    cmd = relion_command(_params(tmp_path / "p", job_dir=tmp_path / "p" / "myrefine"))
    assert cmd[cmd.index("--o") + 1] == "myrefine/run"


def test_local_command_uses_open_mpi_flags(tmp_path, monkeypatch):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed")
    monkeypatch.delenv("RELION_MPIRUN", raising=False)
    p = _params(tmp_path / "proj", mpi_procs=5)
    expected = ["mpirun", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else []) + ["-n", "5"]
    assert local_command(p) == expected + relion_command(p)


def test_local_command_honours_relion_mpirun(tmp_path, monkeypatch):
    # a launcher that is not Open MPI's mpirun gets no Open MPI flags
    monkeypatch.setenv("RELION_MPIRUN", "srun --mpi=pmix")
    assert mpirun_prefix(3) == ["srun", "--mpi=pmix", "-n", "3"]
    p = _params(tmp_path / "proj")
    assert local_command(p)[:5] == ["srun", "--mpi=pmix", "-n", "3", "relion_refine_mpi"]


def test_next_job_dir_numbers_project_wide(tmp_path):
    proj = tmp_path / "proj"
    first = next_job_dir(proj, "Refine3D")
    assert first == proj / "Refine3D" / "job001" and first.is_dir()
    (proj / "Class3D" / "job007").mkdir(parents=True)
    assert next_job_dir(proj, "Refine3D") == proj / "Refine3D" / "job008"
    (proj / "default_pipeline.star").write_text("data_pipeline_general\n\n_rlnPipeLineJobCounter  21\n")
    assert next_job_dir(proj, "Refine3D", create=False) == proj / "Refine3D" / "job021"
    assert not (proj / "Refine3D" / "job021").exists()
    with pytest.raises(ValueError):
        next_job_dir(proj, "../evil")


def test_next_job_dir_never_hands_out_the_same_directory(tmp_path):
    dirs = {next_job_dir(tmp_path, "Refine3D") for _ in range(5)}
    assert len(dirs) == 5


def test_hook_executable_is_beside_python_or_on_path(monkeypatch, tmp_path):
    path = hook_executable()
    assert os.path.isabs(path) and Path(path).name == "credgui-reconstruct"
    beside = Path(sys.executable).parent / "credgui-reconstruct"
    if beside.exists():
        assert path == str(beside.absolute())
    # nothing beside python and nothing on PATH: a clear error
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(launch.LaunchError, match="credgui-reconstruct not found"):
        hook_executable()


def test_params_round_trip_through_json_dict(tmp_path):
    p = _params(tmp_path, auto_iter_max=4, extra_args=("--maxsig", "5"),
                hook_config=HookConfig(denoiser="unet", lambda_max=0.5))
    q = RefineParams.from_dict(p.to_dict())
    assert q == dataclasses.replace(p, job_dir=Path(os.path.abspath(p.job_dir)))


# ------------------------------------------------------------------------------------------
# validation at the door (small files made here)
# ------------------------------------------------------------------------------------------


def _write_dataset(proj: Path, box=16, pixel=2.0, ref_box=None, ref_pixel=None, stack="particles.mrcs"):
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "particles.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n"
        f"1 {pixel} {box}\n\ndata_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n"
        f"000001@{stack} 1\n000002@{stack} 1\n"
    )
    with mrcfile.new(proj / "particles.mrcs", overwrite=True) as m:
        m.set_data(np.zeros((2, box, box), np.float32))
    n = ref_box or box
    with mrcfile.new(proj / "initial_model.mrc", overwrite=True) as m:
        m.set_data(np.zeros((n, n, n), np.float32))
        m.voxel_size = ref_pixel or pixel


def test_validate_fills_pixel_size_from_optics(tmp_path):
    proj = tmp_path / "proj"
    _write_dataset(proj)
    p = validate_params(_params(proj, particle_diameter=20))
    assert p.pixel_size == 2.0 and p.hook_config.pixel_size == 2.0
    assert p.job_dir.is_absolute()


@pytest.mark.parametrize(
    "setup,kw,match",
    [
        (dict(ref_box=18), {}, r"initial_model.mrc: shape \(18, 18, 18\).*--new_box 16"),
        (dict(ref_pixel=3.0), {}, r"initial_model.mrc: 3 A/px but the particles are 2 A/px"),
        (dict(stack="elsewhere.mrcs"), {}, r"image stack 'elsewhere.mrcs' not found"),
        ({}, dict(pixel_size=2.5), r"optics pixel size is 2.0 A but 2.5 A"),
        ({}, dict(particle_diameter=40), r"particle diameter 40 A must be > 0 and fit the box \(16 px x 2 A = 32 A\)"),
        ({}, dict(mpi_procs=2), r"at least 3 MPI processes"),
        ({}, dict(symmetry="C 1"), r"symmetry must be a point group"),
        ({}, dict(extra_args=("--blush",)), r"job004: --blush \(RELION 5\) replaces the --external_reconstruct hook"),
    ],
)
def test_validate_rejects_bad_input_with_one_line(tmp_path, setup, kw, match):
    proj = tmp_path / "proj"
    _write_dataset(proj, **setup)
    kw = {"particle_diameter": 20, **kw}
    with pytest.raises(InputError, match=match) as info:
        validate_params(_params(proj, **kw))
    assert "\n" not in str(info.value)


def test_validate_rejects_relion_30_star_and_missing_files(tmp_path):
    proj = tmp_path / "proj"
    _write_dataset(proj)
    (proj / "old.star").write_text("data_\nloop_\n_rlnImageName #1\n000001@particles.mrcs\n")
    with pytest.raises(InputError, match="no data_optics block"):
        validate_params(_params(proj, particles_star=proj / "old.star", particle_diameter=20))
    with pytest.raises(InputError, match="initial model not found"):
        validate_params(_params(proj, initial_model=proj / "nope.mrc", particle_diameter=20))


def test_launch_refuses_a_job_dir_that_holds_a_refinement(tmp_path):
    proj = tmp_path / "proj"
    _write_dataset(proj)
    job = proj / "Refine3D" / "job001"
    job.mkdir(parents=True)
    (job / "run_it002_optimiser.star").write_text("data_optimiser_general\n")
    with pytest.raises(InputError, match="already holds a refinement"):
        launch.launch_local(_params(proj, job_dir=job, particle_diameter=20), hook="true")


def test_blush_without_the_hook_is_allowed_and_the_config_records_the_symmetry(tmp_path):
    proj = tmp_path / "proj"
    _write_dataset(proj)
    p = validate_params(_params(proj, particle_diameter=20, extra_args=("--blush",), external_reconstruct=False))
    assert "--blush" in relion_command(p) and "--external_reconstruct" not in relion_command(p)
    p = validate_params(_params(proj, particle_diameter=20, symmetry="D7"))
    assert p.hook_config.symmetry == "D7"
    # a group the hook cannot symmetrise f(x~) with: refused with a denoiser, RELION's business without
    with pytest.raises(InputError, match=r"--sym C2v: point group 'C2v' is not supported"):
        validate_params(_params(proj, particle_diameter=20, symmetry="C2v"))
    p = validate_params(_params(proj, particle_diameter=20, symmetry="C2v", hook_config=HookConfig(denoiser="none")))
    assert p.hook_config.symmetry is None


def test_shipped_weights_are_recorded_so_that_moving_the_install_keeps_them(tmp_path):
    from credgui.resources import portable_resource, resolve_resource, resource_path

    proj = tmp_path / "proj"
    _write_dataset(proj)
    shipped = resource_path("models", "cwred_unet.pt")
    p = validate_params(_params(proj, particle_diameter=20, hook_config=HookConfig(weights=str(shipped))))
    assert p.hook_config.weights == "credgui:models/cwred_unet.pt"
    assert resolve_resource(p.hook_config.weights) == shipped
    mine = tmp_path / "my_model.pt"
    assert portable_resource(mine) == str(mine)  # a user's own file stays where it is
    with pytest.raises(ValueError, match="bad shipped-file reference"):
        resolve_resource("credgui:../etc/passwd")
