"""The simulated data in RELION 3.1's own conventions, checked with RELION's programs."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from credgui.relion.mrc import read_mrc
from credgui.relion.star import format_star, read_star, write_star_atomic
from credgui.simulate import simulate_dataset
from credgui.metrics.filters import lowpass

pytestmark = [
    pytest.mark.relion,
    pytest.mark.skipif(shutil.which("relion_project") is None, reason="RELION 3.1 not installed"),
]


def star_with_true_poses(manifest, path):
    """particles.star + the true angles and origins, image names made absolute."""
    star = read_star(manifest.particles_star)
    poses = read_star(manifest.true_poses_star)["particles"]
    parts = star["particles"]
    assert poses["rlnImageName"] == parts["rlnImageName"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        parts[label] = poses[label]
    parts["rlnImageName"] = [n.replace("@", f"@{manifest.directory}/") for n in parts["rlnImageName"]]
    text = format_star(star, loops={"optics", "particles"}).replace("\ndata_", "\n# version 30001\n\ndata_")
    write_star_atomic(path, text)
    return path


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_relion_project_reproduces_the_particles(tmp_path, demo_structure):
    """relion_project of ground_truth.mrc at the true angles, origins and CTFs gives our images
    (SNR 100, so the noise costs about 0.5 % correlation)."""
    m = simulate_dataset(demo_structure, tmp_path / "data", box=40, pixel_size=3.5, n_particles=60, snr=100.0,
                         max_offset_px=3.0, astigmatism_um=0.3, defocus_um=(0.5, 2.0), seed=11)
    star = star_with_true_poses(m, tmp_path / "with_poses.star")
    subprocess.run(["relion_project", "--i", str(m.ground_truth), "--o", str(tmp_path / "proj"),
                    "--ang", str(star), "--ctf"], check=True, capture_output=True, timeout=120)
    ours = read_mrc(m.particles_mrcs).astype(np.float64)
    theirs = read_mrc(tmp_path / "proj.mrcs").astype(np.float64)
    assert theirs.shape == ours.shape
    corr = np.array([_corr(a, b) for a, b in zip(ours, theirs)])
    assert np.median(corr) > 0.985 and corr.min() > 0.97, corr
    assert float((ours * theirs).sum() / (theirs * theirs).sum()) == pytest.approx(1.0, abs=0.03)
    # the check discriminates: the same images against the neighbours' projections
    assert np.median([_corr(a, b) for a, b in zip(ours, np.roll(theirs, 1, axis=0))]) < 0.6


def test_relion_reconstruct_with_the_true_poses_gives_the_ground_truth(tmp_path, demo_structure):
    """Refinement's conventions (angles, origin sign, CTF) as relion_reconstruct applies them.
    Measured: correlation 0.996 with the true poses; 0.70 with the origins negated, 0.74 with psi
    negated."""
    m = simulate_dataset(demo_structure, tmp_path / "data", box=40, pixel_size=3.5, n_particles=300, snr=0.1,
                         max_offset_px=3.0, astigmatism_um=0.2, seed=2)
    star = star_with_true_poses(m, tmp_path / "with_poses.star")
    subprocess.run(["relion_reconstruct", "--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--ctf"],
                   check=True, capture_output=True, timeout=300)
    rec = read_mrc(tmp_path / "rec.mrc").astype(np.float64)
    truth = read_mrc(m.ground_truth).astype(np.float64)
    mask = read_mrc(m.mask).astype(np.float64)
    # compare up to 14 A (where 300 images at SNR 0.1 carry signal)
    r, t = (lowpass(v, m.pixel_size, 14.0) * mask for v in (rec, truth))
    assert _corr(r, t) > 0.95
