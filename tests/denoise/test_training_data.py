"""Training data (resolution pairs, RELION harvesting), the confidence curve, the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from credgui.denoise.evaluate import CurveBin, propose_thresholds
from credgui.denoise.harvest import (
    IntermediatePairs,
    fit_scale,
    iter_harvest,
    load_intermediates,
    read_fsc,
    save_intermediates,
)
from credgui.denoise.pairs import (
    PairSettings,
    ResolutionPairs,
    coarsened_truth,
    fixed_pairs,
)
from credgui.denoise.train import TrainConfig, load_checkpoint, train
from credgui.denoise.unet import (
    UNet3D,
    default_weights_path,
    load_unet_denoiser,
    save_model,
)
from credgui.metrics.fsc import fsc, resolution_at

CLI = [sys.executable, "-m", "credgui.cli"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int = 32, seed: int = 0, k: int = 30) -> np.ndarray:
    """A toy molecule: k Gaussian blobs of 1.2 voxels inside a sphere of radius n/4."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(k):
        c = n / 2 + rng.uniform(-n / 4, n / 4, 3)
        vol += np.exp(
            -((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * 1.2**2)
        )
    return vol


def test_coarsened_truth_is_the_truth_times_the_fsc():
    gt = _blobs()
    assert np.allclose(coarsened_truth(gt, np.ones(40)), gt, atol=1e-5)
    assert np.allclose(coarsened_truth(gt, np.zeros(40)), 0, atol=1e-7)
    half = coarsened_truth(gt, np.full(40, 0.5), scale=2.0)
    assert np.allclose(half, gt, atol=1e-5)


def test_resolution_pairs_put_the_half_map_fsc_at_the_drawn_resolution():
    """Two draws with independent noise of the same map are two 'half maps': their FSC must
    cross 0.143 near the nominal resolution the pairs were made for (the noise profile works)."""
    vs = 1.5
    gt = _blobs(64, k=150)
    settings = PairSettings(
        blur=(0.0, 0.0),
        snr_falloff=(150.0, 150.0),
        solvent_damping=(1.0, 1.0),
        extra_shells=(40, 40),
    )
    src = ResolutionPairs(gt[None], vs, settings)
    for res in (4.0, 8.0):
        (a, ta, _), (b, _, _) = (
            src.sample(np.random.default_rng(seed), resolution=res, index=0, rotation=0)
            for seed in (11, 12)
        )
        measured = resolution_at(fsc(a, b), 0.143, vs, 64)
        assert 0.8 * res < measured < 1.25 * res, (res, measured)
        # the target is the truth low-passed: its correlation with the truth falls off past res
        f_t = fsc(ta, gt)
        assert f_t[2] > 0.99


def test_harvest_round_trip_and_scale_fit(tmp_path):
    gt = _blobs()
    fsc_curve = np.clip(1.2 - np.arange(17) / 10, 0, 1)
    x = 3.0 * gt + np.random.default_rng(0).normal(
        0, 0.05, gt.shape
    )  # x~ = a * truth + noise
    assert fit_scale(x.astype(np.float32), gt, fsc_curve) == pytest.approx(
        3.0, rel=0.03
    )
    items = fixed_pairs(ResolutionPairs(gt[None], 2.0), [4.0, 9.0], 2)
    path = save_intermediates(tmp_path / "set.npz", items, 2.0, {"kind": "test"})
    s = load_intermediates(path)
    assert (
        len(s) == 4 and set(s.pixel_size) == {2.0} and sorted(set(s.resolution)) == [4.0, 9.0]
    )
    assert all(np.array_equal(a.input, b) for a, b in zip(items, s.inputs, strict=True))
    index = json.loads((tmp_path / "set.json").read_text())
    assert len(index["maps"]) == 4 and index["kind"] == "test"
    x0, _ = IntermediatePairs([s]).batch(0, 0, 3)
    assert x0.shape == (3, 1, 32, 32, 32) and torch.allclose(
        x0.mean(dim=(2, 3, 4)), torch.zeros(3, 1), atol=1e-4
    )


def test_training_pairs_see_what_the_hook_feeds_the_network(tmp_path):
    """A map at 3 A/px, box 24, in a set: its training input is exactly the hook's
    ``to_network`` of it (resampled to the 2 A grid, 36 voxels, standardised), and the target
    follows x~'s resampling and standardisation; training takes 32-voxel crops of it."""
    from credgui.denoise.harvest import Intermediate, network_pair
    from credgui.recon.update import to_network

    rng = np.random.default_rng(3)
    gt = _blobs(24)
    x = (2.0 * gt + rng.normal(0, 0.3, gt.shape)).astype(np.float32)
    y = (1.5 * gt).astype(np.float32)
    save_intermediates(tmp_path / "s.npz", [Intermediate("j", 2, 1, 9.0, 2.0, x, y, None, 3.0)])
    s = load_intermediates(tmp_path / "s.npz")
    z, t = network_pair(s.inputs[0], s.targets[0], float(s.pixel_size[0]), 2.0)
    hz, grid = to_network(x, 3.0, 2.0)
    assert z.shape == (36, 36, 36) and np.array_equal(z, hz)
    assert np.allclose(t, grid.apply(y)) and abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    pairs = IntermediatePairs([s], voxel_size=2.0, box=32)
    xb, yb = pairs.batch(0, 0, 2)
    assert xb.shape == yb.shape == (2, 1, 32, 32, 32)


def test_resolution_pairs_training_falls_and_resumes_exactly_with_validation(tmp_path):
    maps = np.stack([_blobs(seed=s) for s in range(3)])
    data = ResolutionPairs(maps[:2], 2.0, PairSettings(res_min=4.0, res_max=12.0))
    val = ResolutionPairs(maps[2:], 2.0, PairSettings(res_min=4.0, res_max=12.0))
    cfg = TrainConfig(
        steps=30,
        batch_size=2,
        lr=3e-3,
        box=32,
        depth=2,
        seed=1,
        checkpoint_every=5,
        device="cpu",
    )
    straight = list(train(cfg, data, tmp_path / "a", val_data=val, val_batches=1))
    losses = [p.result.loss for p in straight]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    assert [p.result.val_loss is not None for p in straight].count(True) == 6
    run = train(cfg, data, tmp_path / "b", val_data=val, val_batches=1)
    for _ in range(12):
        next(run)
    run.close()  # "killed" after step 12: the checkpoint holds step 10
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 10
    resumed = list(train(cfg, data, tmp_path / "b", val_data=val, val_batches=1))
    assert [p.result.loss for p in resumed] == losses[10:]
    assert [p.result.val_loss for p in resumed] == [p.result.val_loss for p in straight[10:]]
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert len(ckpt["val_losses"]) == 6


def test_thresholds_follow_the_curve():
    def b(res, r):
        return CurveBin(res * 0.9, res * 1.1, res, 4, r, r, 0.01)

    bins = [
        b(3.2, 0.40),
        b(4.2, 0.41),
        b(5.5, 0.45),
        b(7.5, 0.70),
        b(11, 0.93),
        b(17, 0.99),
    ]
    assert propose_thresholds(bins) == (11, 5.5)
    assert propose_thresholds(bins, max_low=9.0) == (9.0, 5.5)
    # one noisy coarse bin below the limit does not decide; a bad finest bin does not erase it
    noisy = [
        b(3.2, 1.02),
        b(4.2, 0.5),
        b(5.5, 0.5),
        b(7.5, 0.8),
        b(11, 1.0),
        b(14, 0.9),
    ]
    assert propose_thresholds(noisy) == (7.5, 5.5)
    assert propose_thresholds([b(5, 1.0), b(10, 1.02)]) == (None, None)


def test_ramp_switches_the_prior_on_only_where_every_map_was_helped():
    from credgui.denoise.evaluate import ramp_from_curve

    def b(lo, hi, mean, worst):
        return CurveBin(lo, hi, (lo + hi) / 2, 10, mean, mean, 0.1, worst)

    bins = [b(4, 5, 0.3, 0.5), b(5, 6, 0.25, 0.45), b(6, 8, 0.4, 0.7), b(8, 10, 0.6, 0.85),
            b(10, 12, 0.8, 1.05), b(12, 15, 0.5, 0.7)]
    # the 10-12 A bin has a map made worse: lambda must be 0 from 10 A on, although 12-15 A helps
    low, high = ramp_from_curve(bins)
    assert low == 10 and high == 5.5
    assert ramp_from_curve(bins, max_low=9.0)[0] == 9.0
    assert ramp_from_curve([b(4, 5, 0.95, 1.2)]) == (None, None)


def test_evaluate_denoiser_cli_writes_curve_and_stores_thresholds(tmp_path):
    torch.manual_seed(0)
    weights = save_model(
        tmp_path / "m.pt",
        UNet3D(channels=2, depth=2).eval(),
        {"voxel_size": 2.0, "box": 32},
    )
    items = fixed_pairs(ResolutionPairs(_blobs()[None], 2.0), [4.0, 6.0, 12.0], 2)
    save_intermediates(tmp_path / "val.npz", items, 2.0)
    out = subprocess.run(
        CLI + ["evaluate-denoiser", str(weights), "--sets", str(tmp_path / "val.npz")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "m.eval.json").read_text())
    assert report["n_maps"] == 6 and len(report["bins"]) == 3
    assert (
        report["by_set"][0]["n_maps"] == 6 and len(report["per_map"]["l2_ratio"]) == 6
    )
    assert all(bin_["l2_ratio"] > 0 for bin_ in report["bins"])
    den = load_unet_denoiser(weights, "cpu")
    assert den.info.lambda_low_res == report["lambda_low_res"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "m.eval.png").stat().st_size > 1000


@pytest.mark.relion
def test_train_data_harvests_a_real_refinement(tiny_refine_job, tmp_path):
    job = Path(tiny_refine_job)
    items = list(iter_harvest(job))
    unreg = sorted(job.glob("run_it*_half?_class001_credgui_unreg.mrc"))
    assert len(items) == len(unreg) >= 2
    for it in items:
        f = read_fsc(job / f"run_it{it.iteration:03d}_half1_model.star")
        assert it.scale > 0 and np.isfinite(it.resolution)
        # the target is band-limited by the FSC: nothing where the FSC is 0
        spec = np.abs(np.fft.rfftn(it.target))
        assert np.isfinite(spec).all() and len(f) > 1
    out = subprocess.run(
        CLI + ["train-data", "relion", str(job), "--out", str(tmp_path / "r.npz")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    s = load_intermediates(tmp_path / "r.npz")
    assert len(s) == len(items)
    assert all(a.shape == b.shape == c.shape == (40, 40, 40) for a, b, c in zip(s.inputs, s.targets, s.truths,
                                                                               strict=True))
    assert set(s.pixel_size) == {3.5}  # the job's own sampling: the network grid is the hook's business
    # x~ is the scaled truth plus noise: it correlates with the truth at low resolution
    assert fsc(s.inputs[-1], s.truths[-1])[1:4].min() > 0.5


@pytest.mark.relion
def test_evaluate_denoiser_reports_the_ratio_of_the_maps_the_hook_wrote(tiny_refine_job, tmp_path):
    """One path: a real hook call re-run with a U-Net (3.5 A/px data, a 2.8 A model: resampled
    40 -> 50 and back), harvested, and evaluated: the ratio evaluate-denoiser reports for that
    call equals ||f(x~) - x^|| / ||x~ - x^|| computed from the hook's own two maps."""
    import os

    from credgui.denoise.evaluate import map_ratios
    from credgui.jobs.launch import hook_executable
    from credgui.relion.mrc import read_mrc
    from tests.fixtures.relion import copy_job

    project = tmp_path / "project"
    for f in Path(tiny_refine_job).parent.parent.iterdir():
        if f.is_file() or f.is_symlink():
            (project).mkdir(exist_ok=True)
            os.symlink(f.resolve(), project / f.name)
    job = copy_job(Path(tiny_refine_job), project)
    torch.manual_seed(1)
    weights = save_model(tmp_path / "m.pt", UNet3D(channels=2, depth=2).eval(), {"voxel_size": 2.8, "box": 32})
    (job / "credgui.toml").write_text(f'denoiser = "unet"\nweights = "{weights}"\ndevice = "cpu"\n')
    star = sorted(job.glob("run_it*_half1_class001_external_reconstruct.star"))[-1]
    proc = subprocess.run([hook_executable(), str(star.relative_to(project))], cwd=project, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    root = star.name[: -len("_external_reconstruct.star")]
    unreg, denoised = read_mrc(job / f"{root}_credgui_unreg.mrc"), read_mrc(job / f"{root}_credgui_denoised.mrc")
    gt = Path(tiny_refine_job).parent.parent / "ground_truth.mrc"
    items = list(iter_harvest(job, gt))
    k = next(i for i, it in enumerate(items) if it.extra["unreg"] == f"{root}_credgui_unreg.mrc")
    assert np.array_equal(items[k].input, unreg)
    expected = map_ratios(denoised, unreg, items[k].target)[1]
    out = subprocess.run(
        CLI + ["train-data", "relion", str(job), "--ground-truth", str(gt), "--out", str(tmp_path / "s.npz")],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(CLI + ["evaluate-denoiser", str(weights), "--sets", str(tmp_path / "s.npz"), "--no-store",
                                "--out", str(tmp_path / "ev")], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "ev.eval.json").read_text())
    assert report["per_map"]["box"][k] == 40 and report["per_map"]["pixel_size"][k] == 3.5
    assert report["per_map"]["l2_ratio"][k] == pytest.approx(expected, rel=1e-5)


def test_shipped_model_denoises_a_held_out_family(demo_structure):
    """The shipped weights load, and on a GPCR (a family held out of training) at 6 A and 4 A
    bring x~ closer to the coarsened truth."""
    path = default_weights_path()
    if not path.is_file():
        pytest.skip("no shipped model")
    from credgui.denoise.groundtruth import oriented_map

    den = load_unet_denoiser(path, "cpu", threads=1)
    assert den.info.voxel_size and den.info.lambda_low_res and den.info.lambda_high_res
    gt = oriented_map(demo_structure, 80, den.info.voxel_size)
    src = ResolutionPairs(gt[None], den.info.voxel_size)
    for res in (6.0, 4.0):
        x, y, _ = src.sample(np.random.default_rng(7), resolution=res, index=0)
        before = np.linalg.norm(x - y)
        after = np.linalg.norm(den(x) - y)
        assert after < 0.95 * before, (res, after / before)


def test_cli_trains_from_a_library_with_validation_loss(tmp_path):
    from credgui.denoise.groundtruth import ModelEntry, load_library, save_library

    entries = [ModelEntry(f"m{i}.pdb", f"fam{i}", f"m{i}") for i in range(3)]
    maps = [_blobs(seed=i) for i in range(3)]
    save_library(tmp_path / "train.npz", maps[:2], entries[:2], 2.0)
    save_library(tmp_path / "val.npz", maps[2:], entries[2:], 2.0)
    assert load_library(tmp_path / "val.npz").families == ("fam2",)
    out = subprocess.run(
        [
            *CLI,
            "train",
            "--library",
            str(tmp_path / "train.npz"),
            "--val-library",
            str(tmp_path / "val.npz"),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "4",
            "--batch-size",
            "1",
            "--depth",
            "2",
            "--checkpoint-every",
            "2",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "val " in out.stdout
    den = load_unet_denoiser(tmp_path / "run" / "model.pt", "cpu")
    assert den.info.voxel_size == 2.0 and den.info.box == 32
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["config"]["extra"]["sources"]["val_library"]["families"] == ["fam2"]


@pytest.mark.relion
def test_relion_reconstruct_pairs_are_relion_maps_band_limited_like_auto_refine(demo_structure, tmp_path):
    """One stack, one pair of halves through real relion_reconstruct: x~ on the truth's scale,
    nothing beyond RELION's current size at the pair's resolution, target = a FSC truth."""
    from credgui.denoise.reconstructed import ReconSettings, iter_stack_pairs, relion_current_size
    from credgui.metrics.fsc import shell_index

    st = ReconSettings(pixel_size=(3.0, 3.0), box_factor=(1.5, 1.5), min_box=32, max_box=48, particles=600,
                       subset=(600, 600), snr=(0.2, 0.2), angle_error=(1.0, 1.0), outliers=(0.0, 0.0),
                       shift_error=(0.0, 0.0), pairs_per_stack=1, max_resolution=80.0)
    pairs = list(iter_stack_pairs(demo_structure, tmp_path, 7, st))
    assert [p.half for p in pairs] == [1, 2]
    assert not any(tmp_path.iterdir())  # RELION's files are cleaned up
    for p in pairs:
        box = p.input.shape[0]
        assert p.target.shape == p.truth.shape == (box,) * 3 and p.pixel_size > 0
        assert 2 * p.pixel_size <= p.resolution < 40 and 0.3 < p.scale < 3
        cur = relion_current_size(p.resolution, box, p.pixel_size)
        assert p.draws["current_size"] == cur
        spec = np.abs(np.fft.rfftn(np.fft.ifftshift(p.input)))
        if cur < box:
            assert spec[shell_index(p.input.shape) > cur // 2 + 1].max() < 1e-3 * spec.max()
        assert fsc(p.input, p.truth)[1:4].min() > 0.5
