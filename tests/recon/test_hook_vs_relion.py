"""The hook at lambda = 0 reproduces relion_external_reconstruct on a real RELION run's inputs."""

from __future__ import annotations

import subprocess

import mrcfile
import numpy as np
import pytest

from credgui.jobs.launch import hook_executable
from credgui.relion.star import format_star, read_star

pytestmark = pytest.mark.relion




def test_hook_matches_relion_external_reconstruct(tiny_refine_job, tmp_path):
    stars = sorted(tiny_refine_job.glob("run_it*_half1_class001_external_reconstruct.star"))
    assert stars, "the run kept no hook inputs"
    star = stars[-1]
    # absolute array paths so both programs run from tmp_path
    blocks = read_star(star)
    for key in ("rlnExtReconsDataReal", "rlnExtReconsDataImag", "rlnExtReconsWeight"):
        p = tiny_refine_job.parent.parent / blocks["external_reconstruct_general"][key][0]
        if not p.exists():
            p = tiny_refine_job / p.name
        blocks["external_reconstruct_general"][key] = [str(p.resolve())]
    ref_star = tmp_path / "ref_external_reconstruct.star"
    ref_star.write_text(format_star(blocks, loops={"external_reconstruct_tau2"}))
    subprocess.run(["relion_external_reconstruct", str(ref_star), "--o", str(tmp_path / "relion.mrc")],
                   check=True, capture_output=True, cwd=tmp_path)
    blocks["external_reconstruct_general"]["rlnExtReconsResult"] = [str(tmp_path / "ours.mrc")]
    job = tmp_path / "job"
    job.mkdir()
    ours_star = job / "run_it001_half1_class001_external_reconstruct.star"
    ours_star.write_text(format_star(blocks, loops={"external_reconstruct_tau2"}))
    # relion_external_reconstruct regularises every shell (no --minres_map), see HookConfig
    (job / "credgui.toml").write_text('denoiser = "none"\nminres_map = 0\n')
    hook = hook_executable()
    assert hook
    subprocess.run([hook, str(ours_star)], check=True, capture_output=True, cwd=tmp_path)
    a = mrcfile.read(tmp_path / "relion.mrc")
    b = mrcfile.read(tmp_path / "ours.mrc")
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.9999
    assert np.linalg.norm(a - b) / np.linalg.norm(a) <= 0.01
