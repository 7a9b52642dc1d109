"""``credgui demo``: the README's main command (data set, real CW-RED auto-refine, summary)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import credgui.simulate as sim
from credgui.cli import main as cli_main
from credgui.commands import demo
from credgui.errors import InputError
from tests.fixtures.data import TINY
from tests.fixtures.relion import relion_missing

CREDGUI = str(Path(sys.executable).parent / "credgui")
needs_relion = pytest.mark.skipif(relion_missing() is not None, reason=relion_missing() or "")


@pytest.fixture
def tiny_demo(monkeypatch, tmp_path, tiny_dataset) -> Path:
    """A demo folder whose data/ is a copy of the session's tiny data set, with the demo's
    settings made the tiny ones (so the copy counts as a complete demo data set) and RELION's
    sampling made coarse (so the refinement converges in about a minute)."""
    for key, value in TINY.items():
        monkeypatch.setitem(sim.DEMO_PARAMETERS, "n_particles" if key == "n_particles" else key, value)
    monkeypatch.setattr(demo, "SAMPLING", {**demo.SAMPLING, "healpix_order": 1, "auto_local_healpix_order": 2,
                                           "offset_range": 3.0})
    root = tmp_path / "demo"
    shutil.copytree(tiny_dataset.directory, root / "data")
    return root


def test_help_is_the_module_docstring():
    out = subprocess.run([CREDGUI, "demo", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "CW-RED" in out.stdout and "--particles" in out.stdout and "--gui" in out.stdout
    assert "credgui_demo" in out.stdout


def test_a_complete_demo_data_set_is_reused_not_remade(tiny_demo):
    stack = tiny_demo / "data" / "particles.mrcs"
    before = stack.stat().st_mtime_ns
    manifest, seconds, reused = demo._make_data(tiny_demo / "data")
    assert reused and manifest.n_particles == TINY["n_particles"]
    assert stack.stat().st_mtime_ns == before


def test_project_particles_name_stacks_relative_to_the_project(tmp_path, tiny_dataset):
    project = Path(tiny_dataset.directory).parent
    out = demo.write_project_particles(tiny_dataset, project, tmp_path / "p.star", n_particles=7)
    from credgui.relion.star import read_star

    names = read_star(out)["particles"]["rlnImageName"]
    assert names[0] == f"000001@{Path(tiny_dataset.directory).name}/particles.mrcs" and len(names) == 7
    # data outside the project: absolute stack paths
    names = read_star(demo.write_project_particles(tiny_dataset, tmp_path, tmp_path / "q.star"))["particles"]["rlnImageName"]
    assert names[-1] == f"{TINY['n_particles']:06d}@{Path(tiny_dataset.directory).resolve()}/particles.mrcs"
    with pytest.raises(InputError, match="particles.star: --particles 100000"):
        demo.write_project_particles(tiny_dataset, project, tmp_path / "r.star", n_particles=100_000)


def test_denoiser_is_none_with_a_notice_until_a_model_ships(monkeypatch, tmp_path):
    import credgui.resources

    monkeypatch.setattr(credgui.resources, "resources_dir", lambda: tmp_path)
    name, weights, notice = demo.choose_denoiser("auto")
    assert (name, weights) == ("none", None) and "no trained denoiser" in notice and "\n" not in notice
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "cwred_unet.pt").write_bytes(b"x")
    name, weights, notice = demo.choose_denoiser("auto")
    assert (name, weights, notice) == ("unet", str(tmp_path / "models" / "cwred_unet.pt"), None)
    assert demo.choose_denoiser("none") == ("none", None, None)


@pytest.mark.relion
@needs_relion
def test_demo_refines_to_a_final_map_and_writes_a_summary(tiny_demo, capsys):
    user_job = tiny_demo / "Refine3D" / "job001"
    user_job.mkdir(parents=True)
    (user_job / "run_it000_optimiser.star").write_text("a user's job\n")
    stack = tiny_demo / "data" / "particles.mrcs"
    before = stack.stat().st_mtime_ns
    t0 = time.monotonic()
    rc = cli_main(["demo", "--dir", str(tiny_demo), "--poll", "0.5", "--no-gui"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert time.monotonic() - t0 < 240
    # the user's job is untouched; the demo took the next number; the data set was reused
    assert (user_job / "run_it000_optimiser.star").read_text() == "a user's job\n"
    assert sorted(p.name for p in user_job.iterdir()) == ["run_it000_optimiser.star"]
    job = tiny_demo / "Refine3D" / "job002"
    assert stack.stat().st_mtime_ns == before and "reused" in out
    assert (job / "run_class001.mrc").is_file()
    summary = json.loads((job / demo.SUMMARY_NAME).read_text())
    assert summary["status"] == "finished" and summary["data_reused"] is True
    assert math.isfinite(summary["final_resolution_angst"])
    assert 2 * TINY["pixel_size"] <= summary["final_resolution_angst"] < 30
    assert 2 * TINY["pixel_size"] <= summary["fsc_truth_05_angst"] < 30
    assert summary["fsc_truth_0143_angst"] <= summary["fsc_truth_05_angst"]
    assert summary["final_map"] == str(job / "run_class001.mrc")
    # the shipped model when there is one (then this is a real CW-RED run with the U-Net)
    assert summary["iterations"] >= 2 and summary["denoiser"] == demo.choose_denoiser()[0]
    assert summary["angular_error_median_deg"] < 90  # random orientations: about 126
    assert "--firstiter_cc" in summary["relion_command"]
    # one progress line per iteration, then the summary
    assert "it 001" in out and "final" in out and "FSC against the ground truth" in out
    assert str(job / "run_class001.mrc") in out
    # the honest-resolution check on every half-map iteration the denoiser ran on, as status shows it
    from credgui.commands.status import iteration_line, prior_check_of
    from credgui.relion.jobdir import find_iterations

    checked = [it for it in find_iterations(job, running=False) if not it.final and all(it.denoised_maps)]
    if summary["denoiser"] != "none":
        assert checked
        for it in checked:
            check = prior_check_of(it)
            assert check is not None and not isinstance(check, str), check
            assert -40 < check.shells_ahead < 40 and check.data_resolution >= 2 * TINY["pixel_size"]
            assert f"prior {check.shells_ahead:+.1f} sh" in iteration_line(it, check)
        assert " sh  elapsed" in out  # the demo's progress lines carry it too


@pytest.mark.relion
@needs_relion
def test_ctrl_c_stops_relion_and_leaves_no_process(tmp_path, tiny_dataset):
    root = tmp_path / "demo"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [CREDGUI, "demo", "--dir", str(root), "--particles", "100", "--poll", "0.5", "--no-gui"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        # a suite started in the background by a non-interactive shell inherits SIGINT ignored,
        # and Python then keeps it ignored: give the demo the terminal's default, as a user has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("it 000"):
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    job = root / "Refine3D" / "job001"
    assert "stopping RELION" in out and f"{job}: stopped" in out
    summary = json.loads((job / demo.SUMMARY_NAME).read_text())
    assert summary["status"] == "stopped" and summary["final_map"] is None
    from credgui.jobs import _proc

    assert _proc.relion_processes(job) == []


def test_gui_without_a_display_is_refused_before_anything_is_made(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli_main(["demo", "--dir", str(tmp_path / "d"), "--gui"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gui needs a display" in err
    assert not (tmp_path / "d").exists()


def test_a_regular_install_carries_the_resources(tmp_path):
    """install.sh installs editable; a wheel must carry resources/ too (as credgui/_resources)."""
    import zipfile

    repo = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    shutil.copytree(repo / "credgui", src / "credgui", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "resources", src / "resources")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("credgui-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "credgui/_resources/structures/DRD2_6CM4_target.pdbqt" in names
    assert "credgui/_resources/templates/slurm.sh" in names
    assert "credgui/resources.py" in names and "credgui/commands/demo.py" in names


def test_shipped_files_are_found_through_one_lookup():
    from credgui.jobs.launch import default_template
    from credgui.resources import resource_path

    assert sim.DEFAULT_STRUCTURE == resource_path("structures", "DRD2_6CM4_target.pdbqt")
    assert sim.DEFAULT_STRUCTURE.is_file() and resource_path("templates", "slurm.sh").is_file()
    if "RELION_QSUB_TEMPLATE" not in os.environ:
        assert default_template() == resource_path("templates", "slurm.sh")
