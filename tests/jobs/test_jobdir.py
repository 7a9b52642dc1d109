"""Job directories, iterations and job state from files (credgui.relion.jobdir, credgui.jobs.watch).

Most tests here work on copies of the shared tiny refinement (``tiny_refine_job``), changed the
way a crash or a half-written file would change them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from credgui.errors import InputError
from credgui.jobs.watch import relion_error_line, scan_job, watch_job
from credgui.relion.jobdir import (
    find_iterations,
    mrc_is_whole,
    read_hook_records,
    read_model_star,
    read_optics,
    read_optimiser_star,
)
from tests.fixtures.relion import copy_job, make_project

@pytest.fixture
def job_copy(tmp_path, tiny_refine_job, tiny_dataset) -> Path:
    """A private copy of the tiny refinement (Refine3D/job001 of a new project)."""
    project = make_project(tmp_path / "project", tiny_dataset)
    job = copy_job(tiny_refine_job, project)
    for path in job.iterdir():
        _age(path, 60.0)  # as if RELION wrote everything a minute ago
    return job


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.mark.relion
def test_iterations_of_the_tiny_run(tiny_refine_job):
    its = find_iterations(tiny_refine_job, running=False)
    assert [i.number for i in its] == [0, 1, 2, 3]
    for it in its[1:]:
        assert it.root == "run" and not it.final
        assert it.optimiser_star.name == f"run_it{it.number:03d}_optimiser.star"
        assert [p.name for p in it.half_maps] == [f"run_it{it.number:03d}_half{h}_class001.mrc" for h in (1, 2)]
        assert all(mrc_is_whole(p) for p in it.half_maps)
        assert it.box == 40 and it.pixel_size == pytest.approx(3.5)
        assert np.isfinite(it.resolution) and 2 * 3.5 <= it.resolution <= 40 * 3.5
        assert it.angular_sampling == pytest.approx(7.5)  # healpix 2 + oversampling 1
        assert it.fsc.shape == (21, 3)
        np.testing.assert_array_equal(it.fsc[:, 0], np.arange(21))
        np.testing.assert_allclose(it.fsc[1:, 1], 40 * 3.5 / np.arange(1, 21), rtol=1e-4)
        assert it.fsc[1, 2] > 0.5  # the lowest shells of the half maps agree
        # the hook ran for both halves and left its unregularised maps
        assert sorted(r.half for r in it.hook_records) == [1, 2]
        assert all(r.status == "ok" and r.iteration == it.number for r in it.hook_records)
        assert all(p is not None and p.name.endswith("_credgui_unreg.mrc") for p in it.unreg_maps)
        assert it.denoised_maps == (None, None)  # denoiser "none"
    model = read_model_star(its[3].model_star)
    assert model.resolution == its[3].resolution and model.ori_size == 40


@pytest.mark.relion
def test_tiny_run_state_is_finished(tiny_refine_job):
    state = scan_job(tiny_refine_job)
    assert state.status == "finished" and state.error is None
    assert state.backend == "local" and state.job_id.isdigit()
    assert state.remaining_s == 0.0 and 0 < state.elapsed_s < 1800
    assert len(state.iterations) == 4 and state.last_iteration.number == 3
    assert any("Expectation iteration 3" in line or "Maximization" in line for line in state.log_tail)
    assert state.ground_truth.name == "ground_truth.mrc" and state.mask.name == "mask.mrc"
    assert (tiny_refine_job / "RELION_JOB_EXIT_SUCCESS").exists()
    # keep_inputs = true: RELION's arrays for the hook are still there
    for name in ("data_real", "data_imag", "weight"):
        assert (tiny_refine_job / f"run_it001_half1_class001_external_reconstruct_{name}.mrc").exists()


@pytest.mark.relion
def test_watch_job_on_an_ended_job_yields_once(tiny_refine_job):
    states = list(watch_job(tiny_refine_job, poll_s=0.05, timeout_s=30))
    assert len(states) == 1 and states[0].status == "finished"


@pytest.mark.relion
def test_half_written_optimiser_star_is_not_a_complete_iteration(job_copy):
    opt = job_copy / "run_it003_optimiser.star"
    text = opt.read_text()
    lines = text.splitlines(keepends=True)
    opt.write_text("".join(lines[: len(lines) // 2]))  # cut after a line, as RELION leaves it while writing
    its = find_iterations(job_copy, running=False)
    assert [i.number for i in its] == [0, 1, 2]
    with pytest.raises(InputError, match="incomplete optimiser STAR"):
        read_optimiser_star(opt)
    opt.write_text(text[: text.index("_rlnSgdMuFactor") + 8])  # cut inside a line
    assert [i.number for i in find_iterations(job_copy, running=False)] == [0, 1, 2]
    assert scan_job(job_copy).last_iteration.number == 2
    opt.write_text(text)  # whole again (new mtime: not served from the cache)
    assert [i.number for i in find_iterations(job_copy, running=False)] == [0, 1, 2, 3]


@pytest.mark.relion
def test_newest_iteration_must_settle_while_running(job_copy):
    its = find_iterations(job_copy, running=True, settle_s=2.0)
    assert its[-1].number == 3  # files are old: settled
    (job_copy / "run_it003_half2_model.star").touch()  # just written
    problems: list[str] = []
    its = find_iterations(job_copy, running=True, settle_s=2.0, problems=problems)
    assert its[-1].number == 2
    assert any("iteration 3 is still being written" in p for p in problems)
    # a later iteration's file proves the earlier one complete
    (job_copy / "run_it004_optimiser.star").write_text("data_optimiser_general\n_rlnOutputRootName x\n")
    assert find_iterations(job_copy, running=True, settle_s=2.0)[-1].number == 3


@pytest.mark.relion
def test_a_later_hook_call_proves_the_newest_iteration_whole(job_copy):
    """A hook that fails at once in iteration N+1's M-step must not hide iteration N's files
    (RELION wrote them before calling it), however young they are."""
    (job_copy / "run_it003_half2_model.star").touch()  # just written
    hook_log = job_copy / "credgui_hook.jsonl"
    hook_log.unlink(missing_ok=True)
    assert find_iterations(job_copy, running=True, settle_s=60.0)[-1].number == 2
    hook_log.write_text(json.dumps({"root": "run_it003_half1_class001", "iteration": 3, "half": 1,
                                    "status": "error", "error": "x"}) + "\n")
    assert find_iterations(job_copy, running=True, settle_s=60.0)[-1].number == 2  # same iteration: no proof
    with open(hook_log, "a") as fh:
        # as the hook writes an error record: time, root, status, error only
        fh.write(json.dumps({"time": "2026-12-02T00:00:00", "root": "run_it004_half1_class001",
                             "status": "error", "error": "x"}) + "\n")
    assert find_iterations(job_copy, running=True, settle_s=60.0)[-1].number == 3


@pytest.mark.relion
def test_truncated_half_map_and_model_are_incomplete(job_copy):
    half = job_copy / "run_it002_half2_class001.mrc"
    with open(half, "r+b") as fh:
        fh.truncate(half.stat().st_size - 100)
    assert not mrc_is_whole(half)
    model = job_copy / "run_it001_half1_model.star"
    text = model.read_text()
    model.write_text(text[: text.index("data_model_groups")])
    assert [i.number for i in find_iterations(job_copy, running=False)] == [0, 3]


@pytest.mark.relion
def test_failed_hook_record_fails_the_job(job_copy):
    assert scan_job(job_copy).status == "finished"
    (job_copy / "RELION_JOB_EXIT_SUCCESS").unlink()
    with open(job_copy / "credgui_hook.jsonl", "a") as fh:
        fh.write(json.dumps({"time": "2026-01-01T00:00:00", "root": "run_it004_half1_class001", "iteration": 4,
                             "half": 1, "status": "error", "error": "denoiser 'x' not found\n(see log)"}) + "\n")
        fh.write('{"time": "2026-01-01T00:00:01", "root": "run_it0')  # a line still being written
    state = scan_job(job_copy)
    assert state.status == "failed"
    assert state.error == "hook failed at run_it004_half1_class001: denoiser 'x' not found (see log)"
    records = read_hook_records(job_copy)
    assert records[-1].status == "error" and records[-1].iteration == 4


@pytest.mark.relion
def test_hook_errors_before_the_launch_do_not_count(job_copy):
    record = json.loads((job_copy / "credgui_job.json").read_text())
    with open(job_copy / "credgui_hook.jsonl", "a") as fh:
        fh.write(json.dumps({"root": "run_it001_half1_class001", "iteration": 1, "half": 1, "status": "error",
                             "error": "old failure"}) + "\n")
    record["log_offsets"]["credgui_hook.jsonl"] = (job_copy / "credgui_hook.jsonl").stat().st_size
    (job_copy / "credgui_job.json").write_text(json.dumps(record))
    assert scan_job(job_copy).status == "finished"


@pytest.mark.relion
def test_dead_process_without_success_is_failed(job_copy):
    for name in ("RELION_JOB_EXIT_SUCCESS", "credgui_exit_status"):
        (job_copy / name).unlink(missing_ok=True)
    state = scan_job(job_copy)
    assert state.status == "failed"
    assert "ended without RELION_JOB_EXIT_SUCCESS" in state.error and "\n" not in state.error
    (job_copy / "credgui_exit_status").write_text("134\n")
    assert "exited with code 134" in scan_job(job_copy).error


@pytest.mark.relion
def test_relion_error_in_run_err_is_one_line(job_copy):
    for name in ("RELION_JOB_EXIT_SUCCESS", "credgui_exit_status"):
        (job_copy / name).unlink(missing_ok=True)
    with open(job_copy / "run.err", "a") as fh:
        fh.write("in: ./src/image.h, line 264\nERROR: \nCannot read file missing.mrcs It does not exist\n"
                 "=== Backtrace  ===\nrelion_refine_mpi(main+0x5d) [0x555b8937471d]\n")
    state = scan_job(job_copy)
    assert state.status == "failed"
    assert state.error == "RELION: Cannot read file missing.mrcs It does not exist"


@pytest.mark.relion
def test_corrupt_job_file_gives_unknown_not_an_exception(job_copy):
    (job_copy / "credgui_job.json").write_text("{not json")
    (job_copy / "RELION_JOB_EXIT_SUCCESS").unlink()
    (job_copy / "credgui_exit_status").unlink()
    state = scan_job(job_copy)
    assert state.status in ("unknown", "failed")
    assert state.error is not None and "credgui_job.json" in state.error and "\n" not in state.error


def test_not_a_job_directory(tmp_path):
    with pytest.raises(InputError, match="not a RELION job directory"):
        scan_job(tmp_path)
    with pytest.raises(InputError, match="job directory not found"):
        scan_job(tmp_path / "missing")


def test_relion_error_line_formats():
    assert relion_error_line("x\nERROR: \n ERROR: there was something wrong with system call: h a.star\n") == \
        "RELION: there was something wrong with system call: h a.star"
    assert relion_error_line("ERROR: Cannot find file\n") == "RELION: Cannot find file"
    assert relion_error_line("all fine\nORTE_ERROR_LOG: not a RELION line\n") is None


def test_read_optics_and_large_files(tiny_dataset):
    assert read_optics(tiny_dataset.particles_star) == (pytest.approx(3.5), 40)
