"""A failing ``credgui-reconstruct`` stops a real relion_refine_mpi run (non-zero, no hang).

tests/jobs/test_local.py checks a shell-script hook that fails; this one runs credgui's own
hook, made to fail by a configuration naming a denoiser that does not exist.
"""

from __future__ import annotations

import json

import pytest

from credgui.config import HookConfig
from credgui.jobs import launch_local, watch_job
from tests.fixtures.relion import make_project, relion_missing, tiny_params

pytestmark = pytest.mark.relion


def test_hook_error_stops_relion_with_the_hooks_message(tmp_path, tiny_dataset):
    reason = relion_missing()
    if reason:
        pytest.skip(reason)
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=60)
    params = tiny_params(project, tiny_dataset, healpix_order=1, auto_local_healpix_order=3,
                         hook_config=HookConfig(denoiser="no-such-denoiser", pixel_size=3.5))
    handle = launch_local(params)  # credgui-reconstruct
    states = list(watch_job(params.job_dir, poll_s=0.5, timeout_s=300))
    state = states[-1]
    handle.poll()
    assert state.status == "failed", state.log_tail
    assert "no-such-denoiser" in state.error and "\n" not in state.error
    assert [i.number for i in state.iterations] == [0]  # stopped in iteration 1's M-step
    records = [json.loads(line) for line in (params.job_dir / "credgui_hook.jsonl").read_text().splitlines()]
    assert records and all(r["status"] == "error" for r in records)
    assert not list(params.job_dir.glob("run_it001_half*_class001_external_reconstruct.mrc"))
