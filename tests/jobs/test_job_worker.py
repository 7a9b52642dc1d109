"""The warm denoiser worker comes and goes with the job (credgui.jobs.launch): RELION's --gpu
devices, the socket per job, a real tiny RELION run whose hook calls the worker, and the
worker gone when the job ends or is stopped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from credgui.config import HookConfig, parse_config
from credgui.denoise import worker
from credgui.errors import InputError
from credgui.jobs import launch_local
from credgui.jobs.launch import job_workers, relion_gpu_devices, worker_socket_for
from tests.fixtures.relion import make_project, relion_missing, tiny_params

PLUGINS = Path(__file__).resolve().parents[1] / "recon" / "plugins"


def test_relion_gpu_devices():
    assert relion_gpu_devices(["--j", "2"]) is None
    assert relion_gpu_devices(["--gpu"]) == ["cuda"]
    assert relion_gpu_devices(["--gpu", "", "--j", "1"]) == ["cuda"]
    assert relion_gpu_devices(["--gpu", "0:1"]) == ["cuda:0", "cuda:1"]
    assert relion_gpu_devices(["--gpu", "2,3:1,1"]) == ["cuda:2", "cuda:1"]
    with pytest.raises(InputError, match="--gpu 'a:b': device ids must be numbers"):
        relion_gpu_devices(["--gpu", "a:b"])


def test_job_workers_follow_relion_gpu_and_the_denoiser(tmp_path):
    from credgui.jobs.launch import RefineParams

    job = tmp_path / "P" / "Refine3D" / "job003"
    base = dict(particles_star=tmp_path / "p.star", initial_model=tmp_path / "m.mrc", job_dir=job,
                particle_diameter=100.0)
    s1, s2 = worker_socket_for(job), worker_socket_for(job, half=2)
    assert s2 == s1.replace(".sock", "_half2.sock")
    one = job_workers(RefineParams(**base, hook_config=HookConfig(denoiser="unet")))
    assert one == [(s1, "auto")]
    two = job_workers(RefineParams(**base, hook_config=HookConfig(denoiser="unet"), extra_args=("--gpu", "0:1")))
    assert two == [(s1, "cuda:0"), (s2, "cuda:1")]
    same = job_workers(RefineParams(**base, hook_config=HookConfig(denoiser="unet"), extra_args=("--gpu", "1:1")))
    assert same == [(s1, "cuda:1")]  # both halves queue on one GPU
    assert worker_socket_for("/srv/P/Refine3D/job003") == "/srv/P/Refine3D/job003/credgui_worker.sock"
    assert job_workers(RefineParams(**base, hook_config=HookConfig(denoiser="none"))) == []
    assert job_workers(RefineParams(**base, warm_worker=False)) == []
    deep = tmp_path / ("d" * 120) / "Refine3D" / "job001"
    sock = worker_socket_for(deep)
    assert sock.startswith(f"/tmp/credgui-{os.getuid()}/") and len(sock) < 100
    assert worker_socket_for(deep, half=2) == sock.replace(".sock", "_half2.sock")


def _worker_pids(socket_path: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in args and socket_path.encode() in args and b"--stop" not in args:
                pids.append(int(d.name))
    return pids


@pytest.mark.relion
def test_the_worker_runs_with_the_job_serves_the_hook_and_goes_with_it(tmp_path, tiny_dataset, monkeypatch):
    reason = relion_missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("CREDGUI_PLUGIN_PATH", str(PLUGINS))
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=60)
    cfg = HookConfig(denoiser="test-scale", denoiser_options={"scale": 1.0}, lambda_low_res=100.0,
                     lambda_high_res=50.0)
    params = tiny_params(project, tiny_dataset, auto_iter_max=2, healpix_order=1, auto_local_healpix_order=3,
                         hook_config=cfg)
    handle = launch_local(params)
    job = params.job_dir
    sock = worker_socket_for(job)
    assert parse_config(job / "credgui.toml").worker_socket == sock
    record = json.loads((job / "credgui_job.json").read_text())
    assert record["workers"] == [[sock, "auto"]]
    deadline = time.monotonic() + 60
    while worker.ping(sock) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    state = worker.ping(sock)
    assert state is not None, Path(sock + ".log").read_text()[-500:]
    assert state["pid"] in _worker_pids(sock)
    final = handle.wait(timeout=600)
    assert final.status == "finished", (final.error, final.log_tail)
    records = [json.loads(l) for l in (job / "credgui_hook.jsonl").read_text().splitlines()]
    assert records and all(r["worker"] for r in records)  # every call went to the warm worker
    # lambda 1 from iteration 2 on; 0 at iteration 1 and on the final joined map (schedule.driving_resolution)
    assert all(r["lambda"] == (1.0 if r["half"] is not None and r["iteration"] >= 2 else 0.0) for r in records)
    # RELION has exited: the launcher stopped the worker
    deadline = time.monotonic() + 20
    while (_worker_pids(sock) or Path(sock).exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _worker_pids(sock) == [] and not Path(sock).exists()


@pytest.mark.relion
def test_stopping_the_job_stops_its_worker(tmp_path, tiny_dataset, monkeypatch):
    reason = relion_missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("CREDGUI_PLUGIN_PATH", str(PLUGINS))
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=60)
    params = tiny_params(project, tiny_dataset, auto_iter_max=10,
                         hook_config=HookConfig(denoiser="test-scale", lambda_low_res=100.0, lambda_high_res=50.0))
    handle = launch_local(params)
    sock = worker_socket_for(params.job_dir)
    deadline = time.monotonic() + 60
    while worker.ping(sock) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.ping(sock) is not None
    state = handle.stop(timeout=15)
    from credgui.jobs import _proc

    left = [" ".join(_proc.cmdline(p))[:120] for p in _proc.session_members(handle.pgid)]
    assert state.status == "stopped", left
    deadline = time.monotonic() + 20
    while _worker_pids(sock) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _worker_pids(sock) == []
