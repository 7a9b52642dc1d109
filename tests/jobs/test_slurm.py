"""Queue submission to a real private Slurm (credgui.jobs.launch.submit_queue). Marked
``slurm`` and ``relion``."""

from __future__ import annotations

import json
import time

import pytest

from credgui.jobs import _proc, scan_job, stop_job, submit_queue
from credgui.jobs.watch import queue_state
from tests.fixtures.relion import make_project, relion_missing, tiny_params

pytestmark = [pytest.mark.slurm, pytest.mark.relion]


@pytest.fixture(autouse=True)
def _need_relion():
    reason = relion_missing()
    if reason:
        pytest.skip(reason)


def _follow(job, timeout: float):
    """Scan until the job ends; returns (final state, queue states seen)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = scan_job(job)
        if state.queue_state and (not seen or seen[-1] != state.queue_state):
            seen.append(state.queue_state)
        if state.status != "running":
            return state, seen
        time.sleep(0.5)
    raise AssertionError(f"{job} still running after {timeout} s: {scan_job(job)}")


def test_slurm_job_runs_to_completion(slurm_cluster, tmp_path, tiny_dataset):
    assert slurm_cluster.start_s is not None and slurm_cluster.start_s < 60
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=100)
    params = tiny_params(project, tiny_dataset, auto_iter_max=1, healpix_order=1, auto_local_healpix_order=3)
    handle = submit_queue(params, queue=slurm_cluster.partition, hook="relion_external_reconstruct")
    assert handle.backend == "slurm" and handle.job_id.isdigit()
    script = params.job_dir / "run_submit.script"
    assert script.is_file() and "XXX" not in script.read_text()
    record = json.loads((params.job_dir / "credgui_job.json").read_text())
    assert record["command"] == ["sbatch", "Refine3D/job001/run_submit.script"]
    assert record["job_id"] == handle.job_id

    state, seen = _follow(params.job_dir, timeout=600)
    assert state.status == "finished", (state.error, state.log_tail)
    assert state.backend == "slurm" and state.job_id == handle.job_id
    assert "RUNNING" in seen or "COMPLETING" in seen or "PENDING" in seen
    # finished jobs stay visible to scontrol (MinJobAge): the final state comes from Slurm
    assert queue_state(handle.job_id)[0] == "COMPLETED" and state.queue_state == "COMPLETED"
    assert [i.number for i in state.iterations] == [0, 1]
    assert (params.job_dir / "RELION_JOB_EXIT_SUCCESS").exists()
    assert (params.job_dir / "credgui_exit_status").read_text().strip() == "0"


def test_scancel_stops_a_running_slurm_job(slurm_cluster, tmp_path, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset)
    params = tiny_params(project, tiny_dataset, auto_iter_max=10)
    handle = submit_queue(params, queue=slurm_cluster.partition, hook="relion_external_reconstruct")
    job = params.job_dir
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_proc.relion_processes(job)) < 4:
        time.sleep(0.3)
    assert len(_proc.relion_processes(job)) >= 4, scan_job(job)
    state = scan_job(job)
    assert state.status == "running" and state.queue_state == "RUNNING"
    state = stop_job(job, timeout=20)
    assert state.status == "stopped", state.error
    assert queue_state(handle.job_id)[0] == "CANCELLED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _proc.relion_processes(job):
        time.sleep(0.3)
    assert _proc.relion_processes(job) == []
