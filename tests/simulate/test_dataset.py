"""The data-set writer: files, STAR contents, SNR, reproducibility, atomic output, bad input."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from credgui.errors import InputError
from credgui.progress import Progress
from credgui.relion.mrc import read_mrc, read_voxel_size
from credgui.relion.star import read_star
from credgui.simulate import Manifest, iter_simulate_dataset, simulate_dataset
from credgui.simulate.projection import FourierProjector, ctf_rfft, euler_to_matrix
from tests.fixtures.data import TINY
from tests.simulate._models import helix_pdb, pdb_line

SMALL = dict(box=40, pixel_size=3.5, n_particles=40, snr=0.5)


def _col(block, label):
    return np.array([float(v) for v in block[label]])


def test_files_and_star_contents(tiny_dataset):
    m = tiny_dataset
    files = sorted(p.name for p in m.directory.iterdir())
    assert files == sorted(["particles.star", "particles.mrcs", "true_poses.star", "ground_truth.mrc",
                            "initial_model.mrc", "mask.mrc", "manifest.json"])
    star = read_star(m.particles_star)
    optics, parts = star["optics"], star["particles"]
    assert optics["rlnImageSize"] == ["40"] and float(optics["rlnImagePixelSize"][0]) == 3.5
    assert float(optics["rlnVoltage"][0]) == 300 and float(optics["rlnSphericalAberration"][0]) == 2.7
    assert float(optics["rlnAmplitudeContrast"][0]) == 0.1 and optics["rlnImageDimensionality"] == ["2"]
    assert len(parts["rlnImageName"]) == 300
    assert parts["rlnImageName"][0] == "000001@particles.mrcs"
    assert parts["rlnImageName"][-1] == "000300@particles.mrcs"
    assert not any(k.startswith(("rlnAngle", "rlnOrigin")) for k in parts)  # RELION must not cheat
    du = _col(parts, "rlnDefocusU")
    assert 2000 <= du.min() and du.max() <= 20000 and du.max() - du.min() > 10000
    poses = read_star(m.true_poses_star)["particles"]
    assert poses["rlnImageName"] == parts["rlnImageName"]
    tilt = _col(poses, "rlnAngleTilt")
    assert 0 <= tilt.min() and tilt.max() <= 180
    with mrcfile.mmap(m.particles_mrcs, mode="r") as mrc:
        assert mrc.is_image_stack() and (mrc.header.nx, mrc.header.ny, mrc.header.nz) == (40, 40, 300)
    for path in (m.particles_mrcs, m.ground_truth, m.initial_model, m.mask):
        assert read_voxel_size(path) == pytest.approx(3.5)
    saved = json.loads(m.manifest_json.read_text())
    assert Manifest.load(m.directory) == m and "directory" not in saved
    assert saved["snr_target"] == TINY["snr"] and saved["seed"] == 0 and saved["n_particles"] == 300


def test_measured_snr_of_the_stack_is_the_target(tiny_dataset):
    """Re-project the written ground truth with the written poses and CTFs; the residual of the
    written images is the noise: its variance is 1 and signal/noise variance is the target SNR."""
    m = tiny_dataset
    imgs = read_mrc(m.particles_mrcs).astype(np.float64)
    parts = read_star(m.particles_star)["particles"]
    poses = read_star(m.true_poses_star)["particles"]
    mats = euler_to_matrix(_col(poses, "rlnAngleRot"), _col(poses, "rlnAngleTilt"), _col(poses, "rlnAnglePsi"))
    origins = np.stack([_col(poses, "rlnOriginXAngst"), _col(poses, "rlnOriginYAngst")], 1) / m.pixel_size
    ctf = ctf_rfft(m.box, m.pixel_size, _col(parts, "rlnDefocusU"), _col(parts, "rlnDefocusV"),
                   _col(parts, "rlnDefocusAngle"))
    signal = FourierProjector(read_mrc(m.ground_truth)).project(mats, origins, ctf)
    noise = imgs - signal
    snr = signal.var(axis=(1, 2)).mean() / noise.var()
    assert snr == pytest.approx(TINY["snr"], rel=0.10)
    assert noise.var() == pytest.approx(1.0, rel=0.02)
    assert m.snr_measured == pytest.approx(TINY["snr"], rel=0.10)
    # independent of the projector: image variance = signal + noise variance (noise variance 1)
    assert imgs.var(axis=(1, 2)).mean() - 1.0 == pytest.approx(TINY["snr"], rel=0.10)


def test_initial_model_is_a_30A_lowpass_and_mask_covers_the_truth(tiny_dataset):
    m = tiny_dataset
    truth, ini, mask = (read_mrc(p) for p in (m.ground_truth, m.initial_model, m.mask))
    n = m.box
    shell = np.sqrt(sum(g**2 for g in np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), np.fft.rfftfreq(n), indexing="ij"))) * n
    cut = n * m.pixel_size / 30.0
    fi, ft = np.abs(np.fft.rfftn(ini)), np.abs(np.fft.rfftn(truth))
    assert fi[shell > cut + 1.01].max() < 1e-5 * fi.max()
    low = shell < cut - 1.01
    assert np.allclose(fi[low], ft[low], rtol=1e-3, atol=1e-6 * ft.max())
    assert mask.min() >= 0 and mask.max() == 1.0
    assert (mask[truth > 0.2 * truth.max()] == 1).all()
    assert mask[0].max() < 1 and mask[0, 0, 0] == 0 and mask[-1, -1, -1] == 0 and 0 < mask.mean() < 0.5


def test_same_seed_same_data_other_seed_other_data(tmp_path, demo_structure):
    a = simulate_dataset(demo_structure, tmp_path / "a", seed=5, max_offset_px=2, astigmatism_um=0.1, **SMALL)
    b = simulate_dataset(demo_structure, tmp_path / "b", seed=5, max_offset_px=2, astigmatism_um=0.1, **SMALL)
    c = simulate_dataset(demo_structure, tmp_path / "c", seed=6, max_offset_px=2, astigmatism_um=0.1, **SMALL)
    for name in ("particles.star", "true_poses.star"):
        assert (a.directory / name).read_bytes() == (b.directory / name).read_bytes()
    for name in ("particles.mrcs", "ground_truth.mrc", "mask.mrc"):  # headers hold a time stamp
        assert np.array_equal(read_mrc(a.directory / name), read_mrc(b.directory / name))
    assert not np.array_equal(read_mrc(a.particles_mrcs), read_mrc(c.particles_mrcs))
    assert (a.directory / "true_poses.star").read_bytes() != (c.directory / "true_poses.star").read_bytes()
    poses = read_star(a.true_poses_star)["particles"]
    offs = _col(poses, "rlnOriginXAngst")
    assert 0 < np.abs(offs).max() <= 2 * SMALL["pixel_size"]
    parts = read_star(a.particles_star)["particles"]
    assert np.allclose(_col(parts, "rlnDefocusU") - _col(parts, "rlnDefocusV"), 1000.0)


def test_progress_and_manifest_from_the_generator(tmp_path, demo_structure):
    gen = iter_simulate_dataset(demo_structure, tmp_path / "d", **SMALL)
    steps = list(gen)
    stages = [p.stage for p in steps]
    assert stages[0] == "map" and stages[-1] == "done" and "project" in stages and "noise" in stages
    assert steps[-1].result is not None and steps[-1].result.directory == tmp_path / "d"
    assert isinstance(steps[-1], Progress) and {p.task for p in steps} == {"simulate"}
    assert all(0.0 <= p.fraction <= 1.0 for p in steps)


def test_closing_the_generator_early_leaves_nothing(tmp_path, demo_structure):
    gen = iter_simulate_dataset(demo_structure, tmp_path / "out", **SMALL)
    for p in gen:
        if p.stage == "project":
            break
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_force(tmp_path, demo_structure):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InputError) as err:
        simulate_dataset(demo_structure, out, **SMALL)
    assert err.value.path == out and "--force" in str(err.value)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(InputError, match="replaces only a credgui data set.*keep.txt"):
        simulate_dataset(demo_structure, out, force=True, **SMALL)  # --force never deletes others' files
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    simulate_dataset(demo_structure, out, **SMALL)
    m = simulate_dataset(demo_structure, out, force=True, **SMALL)  # an earlier data set: replaced
    assert m.particles_star.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old dirs left


def _bad_models(tmp_path, demo_structure):
    """case -> (model path, text to write there or None, simulate_dataset overrides, words of the error)"""
    unknown = helix_pdb(element_override="XX")
    waters = "\n".join(pdb_line(i + 1, "O", "HOH", "A", i + 1, (i * 3.0, 0, 0), "O", record="HETATM") for i in range(5))
    return {
        "unknown element": (tmp_path / "unknown.pdb", unknown, {}, "unknown element"),
        "unknown autodock type": (tmp_path / "bad.pdbqt",
                                  "ATOM      1  N   GLU   199      12.742  -3.306  70.409  1.00  0.00    -0.411 Xq\n",
                                  {}, "unknown AutoDock atom type"),
        "no atoms": (tmp_path / "empty.pdb", "REMARK nothing here\nEND\n", {}, "no atoms"),
        "only waters": (tmp_path / "waters.pdb", waters + "\nEND\n", {}, "no protein"),
        "too big": (demo_structure, None, dict(box=32, pixel_size=2.0), "too large for the box"),
        "missing": (tmp_path / "missing.pdb", None, {}, "not found"),
        "pixel size 0": (demo_structure, None, dict(pixel_size=0.0), "pixel size"),
        "pixel size nan": (demo_structure, None, dict(pixel_size=float("nan")), "pixel size"),
        "snr 0": (demo_structure, None, dict(snr=0.0), "SNR"),
        "snr negative": (demo_structure, None, dict(snr=-1.0), "SNR"),
        "odd box": (demo_structure, None, dict(box=41), "even"),
        "defocus reversed": (demo_structure, None, dict(defocus_um=(2.0, 0.5)), "defocus"),
        "bad coordinate": (tmp_path / "badxyz.pdb",
                           helix_pdb().replace(helix_pdb().splitlines()[3][30:38], "  ab.000", 1), {},
                           "line 4: x coordinate 'ab.000' is not a number"),
    }


BAD_CASES = ["unknown element", "unknown autodock type", "no atoms", "only waters", "too big", "missing",
             "pixel size 0", "pixel size nan", "snr 0", "snr negative", "odd box", "defocus reversed",
             "bad coordinate"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_input_error_naming_the_file_and_leaves_nothing(tmp_path, demo_structure, case):
    path, text, overrides, words = _bad_models(tmp_path, demo_structure)[case]
    if text is not None:
        path.write_text(text)
    out = tmp_path / "sub" / "out"
    kwargs = {**SMALL, **overrides}
    with pytest.raises(InputError) as err:
        simulate_dataset(path, out, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and err.value.path == path and str(path) in msg
    assert words.lower() in msg.lower(), msg
    assert not out.exists() and not (tmp_path / "sub").exists()
