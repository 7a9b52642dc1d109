"""Real local RELION runs: stop, crash, continue, adopt (credgui.jobs). Marked ``relion``."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from credgui.jobs import _proc, adopt_job, continue_job, launch_local, scan_job, stop_job, watch_job
from credgui.jobs.launch import HOOK_ENV, local_command, relion_command
from tests.fixtures.relion import copy_job, make_project, relion_missing, tiny_params

pytestmark = pytest.mark.relion


@pytest.fixture(autouse=True)
def _need_relion():
    reason = relion_missing()
    if reason:
        pytest.skip(reason)


def _wait_for(cond, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _ps_lines_of(job: Path, sid: int | None) -> list[str]:
    """``ps`` lines of processes in session ``sid`` or running relion_refine for ``job``."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    rel = f"{job.parent.name}/{job.name}/"
    hits = []
    for line in out.splitlines():
        pid, pg, stat, args = line.split(None, 3)
        if stat.startswith("Z"):
            continue
        if (sid is not None and int(pg) == sid) or ("relion_refine" in args and rel in args and str(job.parent.parent) in _cwd(int(pid))):
            hits.append(line)
    return hits


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def test_stop_kills_the_whole_process_group(tmp_path, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset)
    params = tiny_params(project, tiny_dataset, auto_iter_max=10)
    handle = launch_local(params, hook="relion_external_reconstruct")
    job = params.job_dir
    try:
        # mpirun plus three relion_refine_mpi ranks, all in the launcher's process group
        ranks = _wait_for(lambda: len(_proc.relion_processes(job)) >= 4 and _proc.relion_processes(job), 60, "3 ranks")
        # Open MPI gives each rank its own process group; the launcher's session holds them all
        assert set(ranks) <= set(_proc.session_members(handle.pgid))
        assert scan_job(job).status == "running"
        record = json.loads((job / "credgui_job.json").read_text())
        assert record["command"] == local_command(params) and record["pgid"] == handle.pid
        assert record["hook"] == "relion_external_reconstruct"
    finally:
        state = handle.stop(timeout=15)
    assert state.status == "stopped", state.error
    assert _proc.session_members(handle.pgid) == []
    assert _ps_lines_of(job, handle.pgid) == []
    assert handle.poll() is not None  # the launcher was reaped
    # stopping again is harmless and keeps the status
    assert stop_job(job).status == "stopped"


def test_missing_stack_fails_with_one_line_error(tmp_path, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset)
    star = project / "particles.star"
    lines = Path(tiny_dataset.particles_star).read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if "@particles.mrcs" in line)
    lines[last] = lines[last].replace("@particles.mrcs", "@missing.mrcs")
    star.unlink()
    star.write_text("\n".join(lines) + "\n")  # the first stack exists: launch's check passes
    params = tiny_params(project, tiny_dataset)
    state = launch_local(params, hook="relion_external_reconstruct").wait(timeout=120, poll_s=0.5)
    assert state.status == "failed"
    assert state.error == "RELION: Cannot read file missing.mrcs It does not exist"
    assert (params.job_dir / "RELION_JOB_EXIT_FAILURE").exists()
    assert _ps_lines_of(params.job_dir, None) == []


def test_failing_hook_fails_the_job(tmp_path, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=60)
    hook = tmp_path / "bad hook.sh"  # a space: the hook command must be quoted for /bin/sh
    hook.write_text("#!/bin/sh\necho 'error: hook refuses' >&2\nexit 1\n")
    hook.chmod(0o755)
    params = tiny_params(project, tiny_dataset, healpix_order=1, auto_local_healpix_order=3)
    handle = launch_local(params, hook=shlex.quote(str(hook)))
    states = list(watch_job(params.job_dir, poll_s=0.5, timeout_s=300))
    state = states[-1]
    assert state.status == "failed", state.log_tail
    assert state.error.startswith("RELION: there was something wrong with system call")
    assert str(hook) in state.error and "\n" not in state.error
    assert state.error.endswith("(the hook said: error: hook refuses)")
    assert states[0].status == "running"
    assert [i.number for i in state.iterations] == [0]  # it died in iteration 1's M-step
    # RELION has reported the failure; mpirun then tears its ranks down (seconds on a loaded
    # machine): nothing of the job may be left running after that
    deadline = time.monotonic() + 60
    while _ps_lines_of(params.job_dir, handle.pgid) and time.monotonic() < deadline:
        handle.poll()
        time.sleep(0.5)
    assert _ps_lines_of(params.job_dir, handle.pgid) == []


def test_continue_runs_more_iterations_with_the_hook(tmp_path, tiny_refine_job, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset)
    job = copy_job(tiny_refine_job, project)
    before = json.loads((job / "credgui_job.json").read_text())
    handle = continue_job(job, auto_iter_max=4)
    state = handle.wait(timeout=600)
    assert state.status == "finished", (state.error, state.log_tail)
    record = json.loads((job / "credgui_job.json").read_text())
    relion = record["relion_command"]
    assert relion[:5] == ["relion_refine_mpi", "--continue", "Refine3D/job001/run_it003_optimiser.star",
                          "--o", "Refine3D/job001/run_ct3"]
    # passed again on every continue: RELION 4.0/5.0 read it from the command line only
    # (parseContinue); 3.1 restores it from the optimiser STAR and merely warns
    assert "--external_reconstruct" in relion
    assert record["hook"] == before["hook"] and len(record["history"]) == 1
    last = state.last_iteration
    assert last.number == 4 and last.root == "run_ct3"
    assert last.optimiser_star.name == "run_ct3_it004_optimiser.star"
    # the hook was called again for iteration 4 (RELION kept --external_reconstruct)
    assert sorted(r.half for r in last.hook_records) == [1, 2]
    assert [i.number for i in state.iterations] == [0, 1, 2, 3, 4]


def test_adopt_a_job_started_elsewhere_then_stop_it(tmp_path, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset)
    params = tiny_params(project, tiny_dataset, auto_iter_max=10)
    job = params.job_dir
    cmd = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-n", "3", *relion_command(params)]
    env = {**os.environ, HOOK_ENV: "relion_external_reconstruct"}
    with open(job / "run.out", "w") as out:
        # as RELION's GUI would start it: not through credgui, same process group as the test
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(_proc.relion_processes(job)) >= 4, 60, "RELION processes")
        assert scan_job(job).status == "running" and scan_job(job).backend is None
        handle = adopt_job(job)
        assert handle.backend == "adopted" and handle.pid in _proc.relion_processes(job)
        record = json.loads((job / "credgui_job.json").read_text())
        assert record["command"][:3] == ["relion_refine_mpi", "--o", "Refine3D/job001/run"]
        assert record["hook"] == "relion_external_reconstruct"
        state = stop_job(job, timeout=15)
        assert state.status == "stopped"
        assert proc.wait(timeout=30) != 0
        assert _proc.relion_processes(job) == []
        assert os.getpgid(0) == os.getpgrp()  # the test's own group was not killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
