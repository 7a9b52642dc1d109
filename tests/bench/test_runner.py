"""The benchmark runner: resume, corrupt records, crashed runs (cheap: RELION fails at start-up)."""

from __future__ import annotations

import shutil

import pytest

from credgui.bench.plan import RunSpec, choose_denoiser, parse_plan, variant_config
from credgui.bench.results import FORMAT, read_result, result_path, write_result
from credgui.bench.runner import iter_benchmark
from credgui.cli import main
from credgui.errors import InputError
from credgui.progress import Progress

PLAN = """
title = "test"
seed = 3
snrs = [0.1]
variants = ["relion", "none"]
timeout_minutes = 5
[dataset]
box = 40
pixel_size = 3.5
n_particles = 60
[refine]
offset_range = 3.0
auto_iter_max = 1
{refine_extra}
[[structures]]
name = "DRD2"
model = "resources:structures/DRD2_6CM4_target.pdbqt"
"""


def _plan(tmp_path, refine_extra=""):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(refine_extra=refine_extra))
    return parse_plan(path.read_text(), path)


def _runs(plan):
    den, w, _ = choose_denoiser(plan.denoiser, plan.weights)
    return plan.runs(den, w)


def _fake_finished(out, plan, run):
    """A finished run record as the runner writes it (numbers made up)."""
    rec = {"format": FORMAT, "run_id": run.run_id, "status": "finished", "settings_key": plan.settings_key(run),
           "variant": run.variant, "structure": run.dataset.structure.name, "snr": run.dataset.snr,
           "fsc_truth_05_angst": 9.0, "fsc_truth_0143_angst": 8.0, "reported_angst": 8.5,
           "angular_error": {"median_deg": 1.0}}
    write_result(result_path(out, run), rec)
    return rec


def _seed_out(out, plan):
    out.mkdir()
    (out / "plan.toml").write_text(plan.text)


def test_resume_skips_finished_runs_without_doing_anything(tmp_path):
    plan = _plan(tmp_path)
    out = tmp_path / "out"
    _seed_out(out, plan)
    for run in _runs(plan):
        _fake_finished(out, plan, run)
    events = list(iter_benchmark(plan, out))
    kinds = [e.stage for e in events]
    assert kinds.count("skip") == 2 and "start" not in kinds and "failed" not in kinds
    assert not (out / "data").exists()  # nothing simulated


def test_the_runner_yields_the_one_progress_type_and_the_cli_prints_its_lines(tmp_path, capsys):
    plan = _plan(tmp_path)
    out = tmp_path / "out"
    _seed_out(out, plan)
    records = {run.run_id: _fake_finished(out, plan, run) for run in _runs(plan)}
    events = list(iter_benchmark(plan, out))
    assert all(isinstance(e, Progress) and e.task == "benchmark" for e in events)
    skips = [e for e in events if e.stage == "skip"]
    assert {e.item: e.result for e in skips} == records and [(e.done, e.total) for e in skips] == [(1, 2), (2, 2)]
    assert all(e.line() == f"[{e.done}/{e.total}] {e.item}: {e.message}" for e in skips)
    capsys.readouterr()
    assert main(["benchmark", "run", str(plan.path), "-o", str(out), "--no-report"]) == 0
    assert capsys.readouterr().out.splitlines() == [e.line() for e in events]


def test_corrupt_record_is_named_in_one_line_and_run_again_and_a_crash_does_not_stop_the_others(tmp_path):
    """symmetry X9 passes credgui's checks but RELION dies at start-up: a real, cheap crash."""
    if shutil.which("relion_refine_mpi") is None:
        pytest.skip("RELION 3.1 not installed")
    plan = _plan(tmp_path, 'symmetry = "X9"')
    out = tmp_path / "out"
    _seed_out(out, plan)
    runs = _runs(plan)
    bad = result_path(out, runs[0])
    bad.parent.mkdir()
    bad.write_text('{"format": "credgui-benchmark-run/1", "status": "fini')  # cut short
    with pytest.raises(InputError):
        read_result(bad)
    events = list(iter_benchmark(plan, out, poll_s=0.5))
    invalid = [e for e in events if e.stage == "invalid"]
    assert len(invalid) == 1
    line = invalid[0].line()
    assert "\n" not in line and str(bad) in line and "not valid JSON" in line
    failed = [e for e in events if e.stage == "failed"]
    assert [e.item for e in failed] == [r.run_id for r in runs]  # the first crash did not stop the second
    for run in runs:
        rec = read_result(result_path(out, run))
        assert rec["status"] == "failed"
        assert "\n" not in rec["error"] and "symmetry" in rec["error"].lower(), rec["error"]
    # a second pass retries failed runs, moving the old job directory aside (never deleting it)
    events = list(iter_benchmark(plan, out, poll_s=0.5))
    assert sum(e.stage == "failed" for e in events) == 2
    assert (out / runs[0].dataset.name / "relion.prev-1").is_dir()
    # ... unless told to keep them
    events = list(iter_benchmark(plan, out, retry_failed=False))
    assert [e.stage for e in events].count("skip") == 2


def test_refuses_a_foreign_directory_and_another_plan(tmp_path):
    plan = _plan(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match="not a credgui benchmark directory"):
        list(iter_benchmark(plan, foreign))
    assert (foreign / "mine.txt").read_text() == "user data"
    out = tmp_path / "out"
    _seed_out(out, plan)
    other = parse_plan(plan.text.replace("snrs = [0.1]", "snrs = [0.2]"), plan.path)
    with pytest.raises(InputError, match="another plan"):
        list(iter_benchmark(other, out))


def test_plan_errors_are_one_line_naming_the_plan(tmp_path):
    path = tmp_path / "p.toml"
    for text, words in [
        ("snrs = []", "snrs"),
        ('snrs = [0.1]\nvariants = ["relion", "magic"]\n[[structures]]\nname="a"\nmodel="x.pdb"', "variants"),
        ('snrs = [0.1]\n[[structures]]\nname="a"\nmodel="nowhere.pdb"', "not found"),
        ('snrs = [0.1]\n[[structures]]\nname="a"\nmodel="dockstring:NOPE"', "dockstring"),
    ]:
        with pytest.raises(InputError) as info:
            parse_plan(text, path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg and words in msg


def test_a_retrained_model_under_the_same_path_makes_cwred_results_stale(tmp_path):
    plan = _plan(tmp_path)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"first weights")
    relion_run = next(r for r in plan.runs("unet", str(weights)) if r.variant == "relion")
    key_relion = plan.settings_key(relion_run)
    weights_run = RunSpec(relion_run.dataset, "cwred", variant_config("cwred", "unet", str(weights)), True, None)
    before = plan.settings_key(weights_run)
    weights.write_bytes(b"retrained weights")
    assert plan.settings_key(weights_run) != before
    assert plan.settings_key(relion_run) == key_relion  # plain RELION does not depend on the model
