"""Training the U-Net on Gaussian pairs (Kimanius et al. 2021, section 3.1, second paragraph).

Pairs: a ground-truth map x (z, y, x) and x + n, where n is Gaussian noise drawn in Fourier
space with a given spectral profile (noise amplitude per shell), multiplied in real space by
a soft mask that damps it in the solvent, at a noise level drawn per sample. Augmentation:
the 24 rotations of the cube (``rotate_cube``) and random crops to the training box.
Network input: x + n standardised per volume (section 3.1); target: x with the same affine
map, so the loss is the L2 error of the denoised, standardised map (eq. 19), residual
learning by construction of ``UNet3D``. Optimiser: Adam, constant learning rate 1e-4, L2
weight penalty through Adam's ``weight_decay`` (section 3.1).

Reproducible and resumable: the network's initial weights come from ``seed``; each step's
mini-batch is drawn from ``numpy.random.default_rng([seed, step])``, so a run resumed from a
checkpoint draws exactly the batches an uninterrupted run would. Checkpoints
(``OUT/checkpoint.pt``, atomic, every ``checkpoint_every`` steps and at the end) hold model +
optimiser + step + config + loss history and load with ``torch.load(weights_only=True)``;
the final model is ``OUT/model.pt`` in the ``credgui.denoise.unet`` weights format.

``train`` is a generator yielding a ``credgui.progress.Progress`` per step (task "train", its
``result`` a ``TrainStep``: loss, seconds, checkpoint, validation loss); closing it between
yields stops cleanly (the last checkpoint stays valid).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credgui.denoise.unet import (
    UNet3D,
    read_model_file,
    resolve_device,
    save_model,
    save_torch_atomic,
)
from credgui.errors import InputError
from credgui.metrics.filters import shell_filter
from credgui.metrics.masks import soft_mask_sigma
from credgui.progress import Progress, eta_s

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
CHECKPOINT_FORMAT = "credgui-unet-checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (stored as a plain dict in checkpoints).

    box: training crop (voxels, multiple of 2**depth). voxel_size: A (of the maps).
    noise_std: range of the noise standard deviation relative to the ground truth's std
        inside its mask, drawn log-uniformly per sample.
    noise_profile: relative noise amplitude per Fourier shell, shells 0 .. box//2 (index =
        round(|k| * box)); empty means white noise.
    solvent_damping: noise factor in the solvent (mask 0); 1 inside the mask.
    weight_decay: L2 penalty on weights (Adam's weight_decay).
    """

    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    box: int = 64
    voxel_size: float = 1.5
    seed: int = 0
    checkpoint_every: int = 100
    noise_std: tuple[float, float] = (0.5, 4.0)
    noise_profile: tuple[float, ...] = ()
    solvent_damping: float = 0.3
    channels: int = 4
    depth: int = 5
    device: str = "auto"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        multiple = 2**self.depth
        if self.box < multiple or self.box % multiple:
            raise ValueError(
                f"box must be a positive multiple of 2**depth = {multiple}, got {self.box}"
            )
        if self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps must be >= 0, batch_size and checkpoint_every >= 1")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.voxel_size > 0):
            raise ValueError("lr and voxel_size must be > 0, weight_decay >= 0")
        lo, hi = self.noise_std
        if not 0 < lo <= hi:
            raise ValueError(
                f"noise_std must be (low, high) with 0 < low <= high, got {self.noise_std}"
            )
        if not 0 <= self.solvent_damping <= 1:
            raise ValueError(f"solvent_damping must be in [0, 1], got {self.solvent_damping}")
        if self.noise_profile and len(self.noise_profile) != self.box // 2 + 1:
            raise ValueError(
                f"noise_profile needs box//2 + 1 = {self.box // 2 + 1} shells, "
                f"got {len(self.noise_profile)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["noise_std"] = list(self.noise_std)
        d["noise_profile"] = list(self.noise_profile)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["noise_std"] = tuple(d.get("noise_std", cls.noise_std))
        d["noise_profile"] = tuple(d.get("noise_profile", ()))
        return cls(**d)


@dataclass(frozen=True)
class TrainStep:
    """What one training step measured (the ``result`` of its ``Progress``; ``Progress.done`` is
    the step number, 1-based, and ``total`` the run's steps)."""

    loss: float
    seconds: float  # wall time of this step
    checkpoint: Path | None = None  # written after this step, if any
    val_loss: float | None = None  # loss on the fixed validation batches, when computed


# --------------------------------------------------------------------------- data


def rotate_cube(volume: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th (0..23) of the 24 rotations of the cube (rot90 compositions), z,y,x axes.

    Six choices of where axis 0 points, times four quarter turns about it.
    """
    if not 0 <= k < 24:
        raise ValueError(f"rotation index must be in 0..23, got {k}")
    face, turn = divmod(k, 4)
    if face < 4:
        v = np.rot90(volume, face, axes=(0, 1))
    else:
        v = np.rot90(volume, 1 if face == 4 else 3, axes=(0, 2))
    return np.rot90(v, turn, axes=(1, 2))


def coloured_noise(rng: np.random.Generator, box: int, profile: np.ndarray | None) -> np.ndarray:
    """Real-space Gaussian noise, unit std, whose amplitude per shell follows ``profile``.

    profile: (box//2+1,) relative amplitude per shell (None: white). Drawn in Fourier space:
    white noise -> rfftn(axes 0,1,2) -> times profile[shell] -> irfftn.
    """
    white = rng.standard_normal((box, box, box)).astype(np.float32)
    if profile is None:
        return white
    # shells past box//2 (the corners) keep the amplitude of shell box//2
    amp = np.asarray(profile, dtype=np.float64)
    held = amp[np.minimum(np.arange(int(np.ceil(np.sqrt(3) * box / 2)) + 2), box // 2)]
    noise = shell_filter(white, held).astype(np.float32)
    std = noise.std()
    return noise / std if std > 0 else noise


def noise_profile_from_file(path: str | Path, box: int, voxel_size: float) -> tuple[float, ...]:
    """Read a noise spectrum and put it on the training box's shells 0 .. box//2.

    The file: two whitespace-separated columns, spatial frequency (1/A) and relative noise
    amplitude (not power), '#' comments; linear interpolation, held flat beyond its ends.
    Shell s is at frequency s / (box * voxel_size).
    """
    path = Path(path)
    try:
        table = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(
            path, f"not a readable two-column noise profile ({' '.join(str(exc).split())[:160]})"
        ) from None
    if table.shape[1] < 2 or len(table) < 2:
        raise InputError(
            path,
            f"noise profile needs >= 2 rows of 'frequency(1/A) amplitude', got shape {table.shape}",
        )
    freq, amp = table[:, 0], table[:, 1]
    if np.any(np.diff(freq) <= 0) or np.any(amp < 0) or not np.all(np.isfinite(table)):
        raise InputError(
            path, "noise profile frequencies must increase and amplitudes be finite and >= 0"
        )
    shells = np.arange(box // 2 + 1) / (box * voxel_size)
    return tuple(float(v) for v in np.interp(shells, freq, amp))


class GaussianPairs:
    """Noisy/clean training pairs from ground-truth maps (section 3.1's Gaussian model).

    maps: (D, H, W) float arrays, each at least ``config.box`` per side; masks: matching soft
    solvent masks (None: ``credgui.metrics.masks.soft_mask_sigma``).
    """

    def __init__(
        self,
        maps: Sequence[np.ndarray],
        config: TrainConfig,
        masks: Sequence[np.ndarray] | None = None,
    ) -> None:
        if not maps:
            raise ValueError("training needs at least one ground-truth map")
        box = config.box
        for i, m in enumerate(maps):
            if m.ndim != 3 or min(m.shape) < box:
                raise ValueError(
                    f"map {i} has shape {m.shape}; every side must be >= the training box {box}"
                )
        self.config = config
        self.maps = [np.asarray(m, dtype=np.float32) for m in maps]
        self.masks = (
            [soft_mask_sigma(m) for m in self.maps]
            if masks is None
            else [np.asarray(k, np.float32) for k in masks]
        )
        self.profile = (
            np.asarray(config.noise_profile, dtype=np.float64) if config.noise_profile else None
        )
        # signal std inside the mask sets the noise scale
        self.signal_std = [
            float(m[k > 0.5].std()) if (k > 0.5).any() else float(m.std())
            for m, k in zip(self.maps, self.masks, strict=True)
        ]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(noisy, clean), both standardised by the noisy map's mean and std, (box, box, box)."""
        cfg = self.config
        i = int(rng.integers(len(self.maps)))
        vol, mask = self.maps[i], self.masks[i]
        starts = [int(rng.integers(s - cfg.box + 1)) for s in vol.shape]
        crop = tuple(slice(s, s + cfg.box) for s in starts)
        k = int(rng.integers(24))
        clean = np.ascontiguousarray(rotate_cube(vol[crop], k))
        soft = np.ascontiguousarray(rotate_cube(mask[crop], k))
        lo, hi = cfg.noise_std
        sigma = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * self.signal_std[i]
        noise = coloured_noise(rng, cfg.box, self.profile)
        noisy = clean + sigma * noise * (cfg.solvent_damping + (1 - cfg.solvent_damping) * soft)
        mean, std = float(noisy.mean()), float(noisy.std())
        return ((noisy - mean) / std).astype(np.float32), ((clean - mean) / std).astype(np.float32)

    def batch(self, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch of ``step`` (deterministic in seed and step): (size, 1, box^3) x2."""
        return sample_batch(self.sample, seed, step, size)


def sample_batch(sample, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` pairs from ``sample(rng)`` as (size, 1, box, box, box) input and target tensors.
    The generator is seeded with (seed, step), so a resumed run draws the same batches."""
    rng = np.random.default_rng([seed, step])
    pairs = [sample(rng) for _ in range(size)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
    y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
    return x, y


# --------------------------------------------------------------------------- loop

_POOL_DATA: Any = None  # the pair source, inherited by forked batch workers


def _pool_batch(seed: int, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    x, y = _POOL_DATA.batch(seed, step, size)
    return x.numpy(), y.numpy()


def _batches(
    data: Any, seed: int, start: int, steps: int, size: int, workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches ``start..steps-1`` in order. With ``workers`` > 1 they are made ahead by
    forked processes (pair making is numpy FFTs and dominates a GPU step); batches depend only
    on (seed, step), so the result is the same as with one process."""
    if workers <= 1:
        for step in range(start, steps):
            yield data.batch(seed, step, size)
        return
    global _POOL_DATA
    _POOL_DATA = data
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        nxt = start
        while nxt < steps or pending:
            while nxt < steps and len(pending) < 2 * workers:  # bounded look-ahead
                pending.append(pool.apply_async(_pool_batch, (seed, nxt, size)))
                nxt += 1
            x, y = pending.popleft().get()
            yield torch.from_numpy(x), torch.from_numpy(y)


def _save_checkpoint(
    path: Path,
    model: UNet3D,
    optimiser: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    losses: list[float],
    val_losses: list[list[float]] | None = None,
) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimiser.state_dict(),
        "step": step,
        "config": config.to_dict(),
        "net_config": dict(model.config),
        "losses": list(losses),
        "val_losses": [list(v) for v in (val_losses or [])],
    }
    return save_torch_atomic(payload, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (weights_only); InputError when it is not one."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises many types for a corrupt or foreign file)
        raise InputError(
            path,
            f"not a readable checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            path, f"not a credgui training checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return raw


def validation_loss(
    model: UNet3D, val_data: Any, config: TrainConfig, batches: int, device: torch.device
) -> float:
    """Mean L2 loss on ``batches`` fixed validation batches (seed + 1e6: never a training batch)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for b in range(batches):
            x, y = val_data.batch(config.seed + 1_000_000, b, config.batch_size)
            total += float(torch.nn.functional.mse_loss(model(x.to(device)), y.to(device)))
    return total / max(batches, 1)


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a checkpoint's network as a weights file (``save_model`` format), e.g. to ship or
    evaluate a model while its training goes on. ``metadata`` overrides voxel_size, box,
    description, lambdas; ``training`` records the checkpoint's config, step and losses."""
    raw = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(raw["config"])
    model = UNet3D(raw["net_config"])
    model.load_state_dict(raw["model"])
    model.eval()
    losses = [float(v) for v in raw["losses"]]
    tail = losses[-50:]
    meta: dict[str, Any] = {
        "voxel_size": config.voxel_size,
        "box": config.box,
        "description": config.description or f"3D U-Net, {raw['step']} steps",
        "training": {
            "config": config.to_dict(),
            "steps": int(raw["step"]),
            "loss_last_50_mean": float(np.mean(tail)) if tail else None,
            "val_losses": [list(v) for v in raw.get("val_losses", [])],
        },
    }
    extra = dict(metadata or {})
    meta["training"].update(extra.pop("training", {}))
    meta.update(extra)
    return save_model(out, model, meta)


def _optimiser(model: UNet3D, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train(
    config: TrainConfig,
    data: Any,
    out_dir: str | Path,
    *,
    resume: bool = True,
    val_data: Any | None = None,
    val_batches: int = 2,
    model_metadata: dict[str, Any] | None = None,
    workers: int = 0,
    init_weights: str | Path | None = None,
) -> Iterator[Progress]:
    """Train (or resume training) a ``UNet3D``; yields one ``Progress`` per step (``result``: a
    ``TrainStep``).

    data: anything with ``batch(seed, step, size) -> (inputs, targets)`` (``GaussianPairs``,
    ``credgui.denoise.pairs.ResolutionPairs``, ``credgui.denoise.harvest.IntermediatePairs``).
    val_data: the same kind of object on validation maps; its loss on ``val_batches`` fixed
    batches is computed at every checkpoint (eval mode, no gradient) and kept in the checkpoint.
    Resumes from ``OUT/checkpoint.pt`` when present and ``resume`` (its config must agree on
    everything but ``steps`` and ``device``). ``workers`` > 1 makes batches in that many
    processes (same batches, for a GPU that would otherwise wait on numpy). ``init_weights``: a
    model file whose weights start a new run (fine-tuning; ignored when resuming). Writes ``OUT/model.pt`` after the last step, with
    ``model_metadata`` merged into its ``training`` record.
    """
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    device = resolve_device(config.device)

    torch.manual_seed(config.seed)
    model = UNet3D(channels=config.channels, depth=config.depth)
    model.to(device)
    optimiser = _optimiser(model, config)
    step, losses = 0, []
    val_losses: list[list[float]] = []  # [step, loss]
    if resume and ckpt_path.exists():
        raw = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(raw["config"])
        ignore = ("steps", "device", "checkpoint_every", "description", "extra")
        diff = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name not in ignore and getattr(saved, f.name) != getattr(config, f.name)
        ]
        if diff:
            raise InputError(
                ckpt_path,
                f"checkpoint was made with different settings ({', '.join(diff)}); "
                "use another output folder or resume=False",
            )
        model.load_state_dict(raw["model"])
        optimiser.load_state_dict(raw["optimizer"])
        step, losses = int(raw["step"]), [float(v) for v in raw["losses"]]
        val_losses = [list(v) for v in raw.get("val_losses", [])]
        log.info("resumed from %s at step %d", ckpt_path, step)
    elif init_weights is not None:
        raw = read_model_file(init_weights)
        if dict(raw["config"]) != dict(model.config):
            raise InputError(
                init_weights,
                f"network shape {raw['config']} differs from this run's {model.config}",
            )
        model.load_state_dict(raw["state_dict"])
        log.info("weights initialised from %s", init_weights)

    loss_fn = torch.nn.MSELoss()
    model.train()
    t0 = t_start = time.perf_counter()
    first_step = step
    for x, y in _batches(data, config.seed, step, config.steps, config.batch_size, workers):
        x, y = x.to(device), y.to(device)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimiser.step()
        step += 1
        value = float(loss.detach())
        losses.append(value)
        written, val_value = None, None
        if step % config.checkpoint_every == 0 or step == config.steps:
            if val_data is not None:
                val_value = validation_loss(model, val_data, config, val_batches, device)
                val_losses.append([float(step), val_value])
                model.train()
            written = _save_checkpoint(
                ckpt_path, model, optimiser, step, config, losses, val_losses
            )
        t1 = time.perf_counter()
        elapsed = t1 - t_start
        yield Progress("train", "step", step, config.steps, f"loss {value:.5f}", elapsed_s=elapsed,
                       eta_s=eta_s(step - first_step, config.steps - first_step, elapsed),
                       result=TrainStep(value, t1 - t0, written, val_value))
        t0 = t1

    if step == config.steps:
        model.eval()
        save_model(
            out / MODEL_NAME,
            model,
            {
                "voxel_size": config.voxel_size,
                "box": config.box,
                "description": config.description or f"3D U-Net, Gaussian pairs, {step} steps",
                "training": {
                    "config": config.to_dict(),
                    "steps": step,
                    "final_loss": losses[-1] if losses else None,
                    "data": "gaussian-pairs",
                    "val_losses": val_losses,
                    **(model_metadata or {}),
                },
            },
        )


__all__ = [
    "GaussianPairs",
    "TrainConfig",
    "TrainStep",
    "coloured_noise",
    "export_checkpoint",
    "load_checkpoint",
    "noise_profile_from_file",
    "rotate_cube",
    "train",
]
