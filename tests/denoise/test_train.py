"""Training on Gaussian pairs: augmentation, noise, a tiny run whose loss falls, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from credgui.denoise.train import (
    GaussianPairs,
    TrainConfig,
    coloured_noise,
    load_checkpoint,
    rotate_cube,
    train,
)
from credgui.denoise.unet import load_unet_denoiser
from credgui.metrics.masks import soft_mask_sigma


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int = 24, seed: int = 0) -> np.ndarray:
    """A toy 'molecule': a few Gaussian blobs in a box."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(6):
        c = rng.uniform(n * 0.3, n * 0.7, 3)
        vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * 1.5**2))
    return vol


def _tiny(**kw) -> TrainConfig:
    base = dict(
        steps=40,
        batch_size=2,
        lr=2e-3,
        box=16,
        depth=2,
        channels=4,
        seed=3,
        checkpoint_every=10,
        noise_std=(0.5, 1.0),
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def test_the_24_cube_rotations_are_distinct_and_closed():
    v = np.random.default_rng(0).normal(size=(4, 4, 4))
    rotated = [rotate_cube(v, k) for k in range(24)]
    keys = {r.tobytes() for r in rotated}
    assert len(keys) == 24
    # closed under composition: a rotation of a rotation is one of the 24
    for a, b in itertools.product((1, 5, 17, 22), (2, 9, 20)):
        assert rotate_cube(rotate_cube(v, a), b).tobytes() in keys
    with pytest.raises(ValueError):
        rotate_cube(v, 24)


def test_coloured_noise_follows_its_profile():
    box = 32
    profile = np.linspace(1.0, 0.1, box // 2 + 1)
    noise = coloured_noise(np.random.default_rng(0), box, profile)
    assert noise.std() == pytest.approx(1.0, rel=1e-5)
    from credgui.metrics.fsc import shell_index

    power = np.abs(np.fft.rfftn(noise, axes=(0, 1, 2))) ** 2
    shells = np.minimum(shell_index((box,) * 3), box // 2)
    amp = np.sqrt(np.bincount(shells.ravel(), power.ravel()) / np.bincount(shells.ravel()))
    ratio = (amp / profile)[2:]  # low shells have few voxels
    assert ratio.std() / ratio.mean() < 0.1
    assert amp[2] / amp[-1] > 5


def test_pairs_damp_noise_in_the_solvent():
    gt = np.zeros((32, 32, 32), np.float32)
    gt[12:20, 12:20, 12:20] = 1.0
    mask = soft_mask_sigma(gt)
    assert mask[16, 16, 16] == pytest.approx(1.0) and mask[0, 0, 0] == 0.0
    cfg = _tiny(box=32, solvent_damping=0.2, noise_std=(1.0, 1.0))
    data = GaussianPairs([gt], cfg)
    rng = np.random.default_rng(1)
    noisy, clean = data.sample(rng)
    noise = noisy - clean
    # rotations keep the centred cube centred: solvent is the outer shell of the box
    inside = noise[14:18, 14:18, 14:18].std()
    outside = noise[:4].std()
    assert outside / inside == pytest.approx(0.2, rel=0.35)
    assert noisy.mean() == pytest.approx(0.0, abs=1e-5) and noisy.std() == pytest.approx(
        1.0, rel=1e-4
    )


def test_tiny_training_run_loss_falls(tmp_path):
    cfg = _tiny()
    data = GaussianPairs([_blobs(), _blobs(seed=1)], cfg)
    progress = list(train(cfg, data, tmp_path))
    losses = [p.result.loss for p in progress]
    assert [p.done for p in progress] == list(range(1, 41))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    assert [p.result.checkpoint is not None for p in progress].count(True) == 4
    model = load_unet_denoiser(tmp_path / "model.pt", device="cpu")
    assert model.info.box == 16 and model.info.voxel_size == 1.5
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 40 and len(ckpt["losses"]) == 40 and "state" in ckpt["optimizer"]


def test_resume_gives_the_same_next_loss(tmp_path):
    cfg = _tiny(steps=8, checkpoint_every=4)
    data = GaussianPairs([_blobs()], cfg)
    straight = [p.result.loss for p in train(cfg, data, tmp_path / "a")]

    run = train(cfg, data, tmp_path / "b")
    first = [next(run).result.loss for _ in range(5)]  # step 5 is lost with the "kill"
    run.close()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 4
    resumed = [p.result.loss for p in train(cfg, data, tmp_path / "b")]
    assert first == straight[:5]
    assert resumed == straight[4:]  # bit for bit: same batches, same optimiser state
    with pytest.raises(Exception, match="different settings"):
        next(train(_tiny(steps=8, checkpoint_every=4, lr=1e-3), data, tmp_path / "b"))


def test_cli_run_killed_and_rerun_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL a real `credgui train` after a checkpoint; the same command resumes bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mrcfile

    gt = tmp_path / "gt.mrc"
    with mrcfile.new(gt) as mrc:
        mrc.set_data(_blobs(24))
        mrc.voxel_size = 1.5
    out = tmp_path / "run"
    common = [
        "--maps",
        str(gt),
        "--out",
        str(out),
        "--box",
        "16",
        "--depth",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "2e-3",
        "--seed",
        "3",
        "--checkpoint-every",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    cmd = [sys.executable, "-m", "credgui.cli", "train", *common]
    proc = subprocess.Popen(
        [*cmd, "--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    try:
        while not (ckpt.exists() and load_checkpoint(ckpt)["step"] >= 4):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = load_checkpoint(ckpt)["step"]
    total = killed_at + 4
    subprocess.run([*cmd, "--steps", str(total)], check=True, capture_output=True, timeout=300)
    resumed = load_checkpoint(ckpt)
    assert resumed["step"] == total

    cfg = _tiny(steps=total, checkpoint_every=2, noise_std=(0.5, 4.0))
    straight = [p.result.loss for p in train(cfg, GaussianPairs([_blobs(24)], cfg), tmp_path / "straight")]
    assert resumed["losses"] == pytest.approx(straight, rel=1e-6, abs=0)


def test_batch_workers_give_the_same_training(tmp_path):
    """Pairs made ahead in worker processes (GPU runs) are the batches of a one-process run."""
    cfg = _tiny(steps=6, checkpoint_every=3)
    data = GaussianPairs([_blobs(), _blobs(seed=1)], cfg)
    one = [p.result.loss for p in train(cfg, data, tmp_path / "a")]
    pooled = [p.result.loss for p in train(cfg, data, tmp_path / "b", workers=2)]
    assert pooled == one
    # resuming a pooled run from its checkpoint continues the same sequence
    cfg8 = _tiny(steps=8, checkpoint_every=3)
    assert [p.result.loss for p in train(cfg8, data, tmp_path / "b", workers=2)] == [
        p.result.loss for p in train(cfg8, data, tmp_path / "a")
    ]


def test_init_weights_start_from_a_model_and_a_wrong_shape_is_refused(tmp_path):
    cfg = _tiny(steps=4, checkpoint_every=4)
    data = GaussianPairs([_blobs()], cfg)
    list(train(cfg, data, tmp_path / "a"))
    trained = load_unet_denoiser(tmp_path / "a" / "model.pt", device="cpu")
    fresh = next(train(_tiny(steps=1, lr=1e-12), data, tmp_path / "b",
                       init_weights=tmp_path / "a" / "model.pt"))
    scratch = next(train(_tiny(steps=1, lr=1e-12), data, tmp_path / "c"))
    assert fresh.result.loss != scratch.result.loss  # started from the trained weights, not the seed's
    assert trained.info.box == 16
    with pytest.raises(Exception, match="network shape"):
        next(train(_tiny(channels=8), data, tmp_path / "d", init_weights=tmp_path / "a" / "model.pt"))
