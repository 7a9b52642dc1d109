"""Every CLI's expected failures are one stderr line naming what is wrong (issue 15 case 7;
the worker's own cases are in tests/denoise/test_worker_trust.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from credgui.cli import main

SMALL = ["--box", "40", "--pixel-size", "3.5", "--particles", "20", "--quiet"]


def _one_line(capsys, rc: int, expect_rc: int, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == expect_rc and len(lines) == 1, captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_refine_job_dir_with_a_space(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["refine", "--i", "p.star", "--ref", "r.mrc", "--o", "Refine3D/my job", "--particle-diameter",
               "100", "--dry-run"])
    _one_line(capsys, rc, 2, "Refine3D/my job", "space")
    assert not (tmp_path / "Refine3D").exists()


def test_refine_relion_args_with_an_open_quote(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["refine", "--i", "p.star", "--ref", "r.mrc", "--o", "Refine3D/", "--particle-diameter", "100",
               "--dry-run", "--relion-args", "'unbalanced"])
    _one_line(capsys, rc, 2, "--relion-args", "no closing quotation")


def test_simulate_into_the_current_directory_with_force(tmp_path, monkeypatch, demo_structure, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    rc = main(["simulate", str(demo_structure), "-o", ".", *SMALL, "--force"])
    _one_line(capsys, rc, 2, "current directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_simulate_force_replaces_a_data_set_but_never_unrelated_files(tmp_path, demo_structure, capsys):
    out = tmp_path / "ds"
    assert main(["simulate", str(demo_structure), "-o", str(out), *SMALL]) == 0
    (out / "Refine3D").mkdir()  # the user ran RELION inside the data set, as its docstring says
    (out / "notes.txt").write_text("mine")
    rc = main(["simulate", str(demo_structure), "-o", str(out), *SMALL, "--force", "--seed", "5"])
    _one_line(capsys, rc, 2, str(out), "Refine3D", "notes.txt")
    assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "manifest.json").read_text())["seed"] == 0
    (out / "notes.txt").unlink()
    (out / "Refine3D").rmdir()
    assert main(["simulate", str(demo_structure), "-o", str(out), *SMALL, "--force", "--seed", "5"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5


def test_benchmark_run_on_a_binary_plan(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_bytes(bytes(range(256)) * 4)
    rc = main(["benchmark", "run", str(plan), "-o", str(tmp_path / "out")])
    _one_line(capsys, rc, 2, str(plan), "not UTF-8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("record", [{"start_time": "x"}, {"start_time": 1.0, "log_offsets": {"run.out": "x"}},
                                    {"pid": "12"}])
def test_status_on_a_job_file_with_wrong_types(tmp_path, capsys, record):
    job = tmp_path / "Refine3D" / "job001"
    job.mkdir(parents=True)
    (job / "credgui_job.json").write_text(json.dumps({"backend": "local", **record}))
    assert main(["status", str(job)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(job / "credgui_job.json") in errors[0], captured.out


def test_status_into_a_closed_pipe_is_quiet(tmp_path):
    job = tmp_path / "Refine3D" / "job001"
    job.mkdir(parents=True)
    (job / "run.out").write_text("RELION output\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "credgui.cli", "status", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head` that has read all it wanted
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert err == b"" and proc.returncode == 141


def test_benchmark_plan_cannot_escape_the_resources_folder(tmp_path, capsys):
    from credgui.resources import resource_path

    shipped = (Path(__file__).parents[1] / "bench" / "equivalence_plan.toml").read_text()
    assert "resources:structures/DRD2_6CM4_target.pdbqt" in shipped
    plan = tmp_path / "plan.toml"
    plan.write_text(shipped.replace("resources:structures/DRD2_6CM4_target.pdbqt", "resources:../../../etc/passwd"))
    rc = main(["benchmark", "run", str(plan), "-o", str(tmp_path / "out")])
    _one_line(capsys, rc, 2, str(plan), "must stay inside its folder")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="leaves the resources folder"):
        resource_path("..", "..", "etc", "passwd")
