"""``credgui refine`` and ``credgui status`` (credgui.commands.refine / status)."""

from __future__ import annotations

import json
import shlex

import pytest

from credgui.cli import main as cli
from credgui.jobs import local_command, scan_job
from tests.fixtures.relion import make_project, relion_missing, tiny_params


def test_refine_dry_run_prints_the_exact_command_and_writes_nothing(tmp_path, tiny_dataset, monkeypatch, capsys):
    project = make_project(tmp_path / "project", tiny_dataset)
    monkeypatch.chdir(project)
    rc = cli(["refine", "--i", "particles.star", "--ref", "initial_model.mrc", "--o", "Refine3D/",
              "--particle-diameter", "120", "--iter", "3", "--absolute-greyscale", "--offset-range", "3",
              "--ground-truth", "ground_truth.mrc", "--mask", "mask.mrc", "--dry-run"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    params = tiny_params(project, tiny_dataset, job_dir=project / "Refine3D" / "job001")
    assert shlex.split(printed[-1]) == local_command(params)
    assert not (project / "Refine3D").exists()


def test_refine_needs_inputs_and_reports_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["refine", "--o", "Refine3D/", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "credgui refine: error: --i PARTICLES.star and --ref MAP.mrc are needed (or --continue JOB_DIR)"
    assert cli(["refine", "--i", "nope.star", "--ref", "x.mrc", "--o", "Refine3D/", "--particle-diameter", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("nope.star: particles star not found") and "\n" not in err
    assert not any((tmp_path / "Refine3D").glob("job*"))  # no empty job directory left behind


@pytest.mark.relion
def test_refine_launches_and_follows_to_the_end(tmp_path, tiny_dataset, monkeypatch, capsys):
    if relion_missing():
        pytest.skip(relion_missing())
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=60)
    monkeypatch.chdir(project)
    rc = cli(["refine", "--i", "particles.star", "--ref", "initial_model.mrc", "--o", "Refine3D/",
              "--particle-diameter", "120", "--iter", "1", "--healpix-order", "1",
              "--auto-local-healpix-order", "3", "--absolute-greyscale",
              "--hook", "relion_external_reconstruct", "--follow"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0, out
    job = project / "Refine3D" / "job001"
    record = json.loads((job / "credgui_job.json").read_text())
    assert shlex.split(out[0]) == record["command"]  # the exact command came first
    assert out[1].startswith(f"started {job} (local ")
    assert any(line.startswith(f"{job}: finished") for line in out)
    assert [line.split()[1] for line in out if line.startswith("it ")] == ["000", "001"]
    assert scan_job(job).status == "finished"


@pytest.mark.relion
def test_status_prints_one_line_per_iteration(tiny_refine_job, capsys):
    assert cli(["status", str(tiny_refine_job)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    state = scan_job(tiny_refine_job)
    assert lines[0].startswith(f"{tiny_refine_job}: finished (local {state.job_id}); elapsed ")
    assert len(lines) == 1 + len(state.iterations)
    for line, it in zip(lines[1:], state.iterations):
        assert line.startswith(f"it {it.number:03d}")
        if it.number > 0:
            assert f"res {it.resolution:6.2f} A" in line and "hook 2/2 ok" in line


def test_status_of_a_directory_that_is_no_job(tmp_path, capsys):
    assert cli(["status", str(tmp_path)]) == 2
    assert "not a RELION job directory" in capsys.readouterr().err
