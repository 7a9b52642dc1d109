"""Point-group symmetry of the denoiser term (credgui.recon.symmetry, the hook's use of it).

RELION's own ``relion_image_handler --sym`` is the reference for the groups' conventions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from credgui.config import HookConfig
from credgui.errors import InputError
from credgui.jobs.launch import hook_executable
from credgui.recon.symmetry import group_matrices, normalise_group, symmetrise
from credgui.relion.mrc import read_mrc, write_mrc_atomic
from credgui.relion.protocol import read_call
from tests.recon._inputs import blob_map, make_arrays, write_inputs

PLUGINS = Path(__file__).parent / "plugins"


def _sphere(n: int, radius: float) -> np.ndarray:
    c = np.arange(n) - n // 2
    return np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < radius


@pytest.mark.parametrize("group,order", [("C1", 1), ("C7", 7), ("D7", 14), ("T", 12), ("O", 24), ("I", 60),
                                         ("I1", 60), ("I3", 60), ("I4", 60)])
def test_groups_have_their_order_and_are_closed(group, order):
    mats = group_matrices(group)
    assert len(mats) == order
    for a in mats[:: max(1, order // 7)]:
        assert abs(np.linalg.det(a) - 1) < 1e-9
        for b in mats:
            assert min(np.abs(a @ b - c).max() for c in mats) < 1e-6


def test_unsupported_groups_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="point group 'Dnh'"):
        normalise_group("Dnh")
    with pytest.raises(InputError, match=r"credgui.toml: symmetry: point group 'C2v' is not supported"):
        HookConfig(symmetry="C2v").validate(tmp_path / "credgui.toml")
    assert normalise_group("i") == "I2" and normalise_group("d7") == "D7"


@pytest.mark.relion
@pytest.mark.parametrize("group", ["C2", "C5", "D7", "T", "O", "I", "I1", "I3", "I4"])
def test_symmetrise_matches_relion_image_handler(group, tmp_path):
    if shutil.which("relion_image_handler") is None:
        pytest.skip("relion_image_handler (RELION) not installed")
    vol = blob_map(40, 2.5, seed=3, n_blobs=8)
    write_mrc_atomic(tmp_path / "in.mrc", vol, 2.0)
    subprocess.run(["relion_image_handler", "--i", "in.mrc", "--o", "out.mrc", "--sym", group], cwd=tmp_path,
                   check=True, capture_output=True, timeout=60)
    ref = np.asarray(read_mrc(tmp_path / "out.mrc"))
    mine = symmetrise(vol, group)
    inside = _sphere(40, 16)
    assert np.corrcoef(ref[inside], mine[inside])[0, 1] > 0.9999
    assert np.corrcoef(vol[inside], mine[inside])[0, 1] < 0.9  # it did change the map


def _run_hook(star: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CREDGUI_CONFIG"}
    env["CREDGUI_PLUGIN_PATH"] = str(PLUGINS)
    return subprocess.run([hook_executable(), str(star)], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def _asymmetry(vol: np.ndarray, group: str, inside: np.ndarray) -> float:
    """max |R v - v| over the group's rotations that map the grid onto itself, relative."""
    n = vol.shape[0]
    worst = 0.0
    for m in group_matrices(group):
        if np.abs(m - np.round(m)).max() > 1e-9:
            continue
        r = np.round(m).astype(int)
        c = np.arange(n) - n // 2
        Z, Y, X = np.meshgrid(c, c, c, indexing="ij")
        pts = np.stack([X.ravel(), Y.ravel(), Z.ravel()])
        q = r @ pts + n // 2
        ok = ((q >= 0) & (q < n)).all(axis=0)
        rot = np.zeros(n**3, np.float32)
        rot[ok] = vol[q[2, ok], q[1, ok], q[0, ok]]
        diff = np.abs(rot.reshape(vol.shape) - vol)[inside]
        worst = max(worst, float(diff.max()))
    return worst / float(np.abs(vol[inside]).max())


@pytest.mark.parametrize("group", ["D2", "O"])
def test_hook_result_keeps_the_point_group_with_an_asymmetric_denoiser(group, tmp_path):
    """A D2 / O symmetric structure, symmetric B and K; the denoiser adds an off-centre blob.
    With the run's group (written at launch from --sym) the hook's map keeps the symmetry; with
    C1 the same call breaks it."""
    box = 32
    truth = symmetrise(blob_map(box, 2.0, seed=5, n_blobs=6), group)
    arrays = make_arrays(box=box, noise=0.0, jitter=0.0, vol=truth)
    job = tmp_path / "Refine3D" / "job001"
    star = write_inputs(job, arrays)
    inside = _sphere(box, box // 2 - 2)
    results = {}
    for sym in ("C1", group):
        (job / "credgui.toml").write_text(f'pixel_size = 2.0\ndenoiser = "test-asym"\nsymmetry = "{sym}"\n'
                                          "lambda_low_res = 100.0\nlambda_high_res = 50.0\nkeep_inputs = true\n")
        proc = _run_hook(star, tmp_path)
        assert proc.returncode == 0, proc.stderr
        rec = json.loads((job / "credgui_hook.jsonl").read_text().splitlines()[-1])
        assert rec["lambda"] == 1.0 and rec["symmetry"] == normalise_group(sym)
        results[sym] = mrcfile.read(read_call(star).result).copy()
    unreg = mrcfile.read(read_call(star).output_path("credgui_unreg.mrc"))
    assert _asymmetry(unreg, group, inside) < 1e-4  # RELION's inputs were symmetric
    assert _asymmetry(results["C1"], group, inside) > 0.05  # the denoiser broke it
    assert _asymmetry(results[group], group, inside) < 1e-4  # symmetrised f(x~) keeps it
    denoised = mrcfile.read(read_call(star).output_path("credgui_denoised.mrc"))
    assert _asymmetry(denoised, group, inside) < 1e-4


def test_hook_takes_the_group_from_the_sampling_star_without_a_config_value(tmp_path):
    box = 24
    truth = symmetrise(blob_map(box, 2.0, seed=2), "C4")
    job = tmp_path / "Refine3D" / "job002"
    star = write_inputs(job, make_arrays(box=box, noise=0.0, jitter=0.0, vol=truth))
    (job / "run_it003_sampling.star").write_text("\ndata_sampling_general\n\n_rlnSymmetryGroup   c4\n")
    (job / "credgui.toml").write_text('pixel_size = 2.0\ndenoiser = "test-asym"\nlambda_low_res = 100.0\n'
                                      "lambda_high_res = 50.0\n")
    proc = _run_hook(star, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((job / "credgui_hook.jsonl").read_text().splitlines()[-1])
    assert rec["symmetry"] == "C4"
    assert _asymmetry(mrcfile.read(read_call(star).result), "C4", _sphere(box, box // 2 - 2)) < 1e-4
