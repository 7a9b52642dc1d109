"""The paper's 3D U-Net denoiser (Kimanius et al. 2021, section 3.1), its weights file, inference.

Network (``UNet3D``): ``depth`` = 5 down-sampling stages (2x2x2 average pooling) and 5
up-sampling stages (2x2x2 transposed convolutions, stride 2), skip connections by
concatenation. Every stage is two pre-activation blocks BN + ReLU + Conv3d (kernel 3,
padding 1); ``channels`` = 4 in the first hidden layer, doubled at each lower stage
(4, 8, ..., 128 at the bottom). Residual learning (Zhang et al. 2017): the network predicts
the noise, the output is input - prediction. One deliberate detail: the very first block
is a plain Conv3d (no BN + ReLU on the raw input), since a ReLU on the standardised map
would throw away its negative half before any filter has seen it.

Inference (``UNetDenoiser``): per-volume standardisation (subtract the mean, divide by the
std) before the network and undone after (section 3.1); idempotent for the standardised map
the hook hands in. Any box: the volume is padded to a multiple of 2**depth = 32 by
reflection and cropped back (see ``pad_reflect`` for why reflection, not zeros). Boxes
larger than ``max_box`` are cut into overlapping tiles blended with a raised-cosine
(sin^2) window, so memory stays bounded on CPU.

Weights file (``save_model`` / ``load_unet_denoiser``): a ``torch.save`` dict that loads with
``torch.load(path, weights_only=True)``::

    {"format": "credgui-unet/1", "state_dict": {...}, "config": {"in_channels", "channels",
     "depth", "stem", "residual"}, "voxel_size": A, "box": N, "lambda_low_res": A | None,
     "lambda_high_res": A | None, "description": str, "training": {... JSON-able ...}}

Arrays are numpy (z, y, x) float32, as everywhere in credgui.

References: Kimanius, Zickert, Nakane, Adler, Lunz, Schönlieb, Öktem & Scheres (2021),
IUCrJ 8, 60-75, doi:10.1107/S2052252520014384. Ronneberger et al. (2015), U-Net,
doi:10.1007/978-3-319-24574-4_28. Zhang et al. (2017), DnCNN, doi:10.1109/TIP.2017.2662206.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from credgui.denoise.base import DenoiserInfo
from credgui.errors import InputError

log = logging.getLogger(__name__)

FORMAT = "credgui-unet/1"
DEFAULT_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "channels": 4,
    "depth": 5,
    "stem": "conv",
    "residual": True,
}
# Whole-volume inference up to this box (voxels per side, after padding to a multiple of 32);
# larger boxes are tiled. CPU: 160^3 x 4 channels keeps the peak near 1 GB; a GPU has room.
DEFAULT_MAX_BOX = {"cpu": 160, "cuda": 256}
DEFAULT_TILE = 128
DEFAULT_OVERLAP = 32
_META_KEYS = ("voxel_size", "box", "lambda_low_res", "lambda_high_res", "description", "training")


def default_weights_path() -> Path:
    """The shipped model ``models/cwred_unet.pt`` of ``credgui.resources`` (the checkout's
    ``resources/`` or the installed ``credgui/_resources/``)."""
    from credgui.resources import resource_path

    return resource_path("models", "cwred_unet.pt")


# --------------------------------------------------------------------------- network


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Pre-activation block BN + ReLU + Conv3d(kernel 3, padding 1)."""
    return nn.Sequential(
        nn.BatchNorm3d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_in, c_out, kernel_size=3, padding=1),
    )


class UNet3D(nn.Module):
    """3D U-Net predicting the noise of a (B, C, D, H, W) volume; forward returns x - noise.

    D, H, W must be multiples of 2**depth. ``config`` is the plain dict the weights file stores.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = {**DEFAULT_CONFIG, **dict(config or {}), **overrides}
        unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
        if unknown:
            raise ValueError(
                f"unknown U-Net config key(s) {unknown}; known: {list(DEFAULT_CONFIG)}"
            )
        depth, width, c_in = int(cfg["depth"]), int(cfg["channels"]), int(cfg["in_channels"])
        if depth < 1 or width < 1 or c_in < 1:
            raise ValueError(f"U-Net depth, channels and in_channels must be >= 1, got {cfg}")
        if cfg["stem"] not in ("conv", "block"):
            raise ValueError(f"U-Net stem must be 'conv' or 'block', got {cfg['stem']!r}")
        cfg.update(depth=depth, channels=width, in_channels=c_in, residual=bool(cfg["residual"]))
        self.config: dict[str, Any] = cfg
        widths = [width * 2**level for level in range(depth + 1)]

        first = (
            nn.Conv3d(c_in, widths[0], kernel_size=3, padding=1)
            if cfg["stem"] == "conv"
            else _block(c_in, widths[0])
        )
        self.down = nn.ModuleList([nn.Sequential(first, _block(widths[0], widths[0]))])
        for level in range(1, depth):
            self.down.append(
                nn.Sequential(
                    _block(widths[level - 1], widths[level]), _block(widths[level], widths[level])
                )
            )
        self.pool = nn.AvgPool3d(2)
        self.bottom = nn.Sequential(
            _block(widths[depth - 1], widths[depth]), _block(widths[depth], widths[depth])
        )
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose3d(widths[level + 1], widths[level], kernel_size=2, stride=2)
                for level in range(depth)
            ]
        )
        self.decode = nn.ModuleList(
            [
                nn.Sequential(
                    _block(2 * widths[level], widths[level]), _block(widths[level], widths[level])
                )
                for level in range(depth)
            ]
        )
        self.head = nn.Conv3d(widths[0], c_in, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (2**depth)."""
        return 2 ** self.config["depth"]

    def predict_noise(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for stage in self.down:
            h = stage(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottom(h)
        for level in reversed(range(len(self.down))):
            h = self.up[level](h)
            h = self.decode[level](torch.cat([h, skips[level]], dim=1))
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(
                f"U-Net input sizes {tuple(x.shape[2:])} must be multiples of {self.multiple}"
            )
        noise = self.predict_noise(x)
        return x - noise if self.config["residual"] else noise


# --------------------------------------------------------------------------- inference helpers


def resolve_device(device: str | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> cuda when available, else cpu; anything else as torch spells it."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    return dev


def pad_reflect(
    volume: np.ndarray, target: tuple[int, ...]
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad ``volume`` by reflection up to ``target`` (split evenly), return it and the crop back.

    Reflection, not zeros: the unregularised map fills its whole box with noise and the
    training maps do too; a zero (= mean) slab would put a flat region with a sharp noise/flat
    boundary next to the box edge, an edge the network never saw, and its receptive field
    carries that artefact into the box. Reflection keeps values continuous across the border
    and keeps the local noise texture and amplitude, and the padded part is cropped away.
    (numpy's reflect mode repeats the reflection when the pad exceeds the box.)
    """
    widths = [
        ((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(volume.shape, target, strict=True)
    ]
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(widths, volume.shape, strict=True))
    if all(lo == 0 and hi == 0 for lo, hi in widths):
        return volume, crop
    return np.pad(volume, widths, mode="reflect"), crop


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of ``tile``-long tiles covering [0, length), overlapping >= ``overlap``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _taper(tile: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    """1-D blending weight: sin^2 ramps of ``overlap`` voxels on the sides shared with another tile.

    Two neighbours overlapping by exactly ``overlap`` sum to 1 (sin^2 + cos^2); elsewhere the
    accumulated weight is divided out, and every weight is > 0, so the blend is always defined.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
        if left:
            w[:overlap] = ramp
        if right:
            w[tile - overlap :] = ramp[::-1]
    return w


class UNetDenoiser:
    """A loaded ``UNet3D`` with its ``DenoiserInfo``: the ``Denoiser`` protocol of ``base.py``.

    ``__call__`` takes an (N, N, N) (any 3-D shape works) real-space map, z,y,x, raw or
    standardised, and returns the denoised map, same shape, float32, in the input's units.

    device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    threads: torch CPU threads (``torch.set_num_threads``, process-wide); None leaves it.
    max_box: whole-volume inference up to this padded box; larger is tiled (default 160 on
        CPU, 256 on CUDA). tile, overlap: tile box (rounded to a multiple of 2**depth, at most
        max_box) and minimum overlap in voxels (default 32, at most half the tile).
    """

    def __init__(
        self,
        model: UNet3D,
        info: DenoiserInfo,
        *,
        device: str | None = "auto",
        threads: int | None = None,
        max_box: int | None = None,
        tile: int = DEFAULT_TILE,
        overlap: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.model = model.to(self.device).eval()
        self.info = info
        m = model.multiple
        self.max_box = (
            int(max_box) if max_box is not None else DEFAULT_MAX_BOX.get(self.device.type, 160)
        )
        largest = max(m, self.max_box - self.max_box % m)  # largest multiple of m within budget
        self.tile = min(max(m, _round_up(int(tile), m)), largest)
        if overlap is None:
            overlap = min(DEFAULT_OVERLAP, self.tile // 2)
        if not 0 <= int(overlap) < self.tile:
            raise ValueError(f"overlap must be in [0, tile={self.tile}), got {overlap}")
        self.overlap = int(overlap)

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        x = np.asarray(volume, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"denoiser input must be a 3-D volume (z, y, x), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("denoiser input contains NaN or infinite values")
        # standardise (paper 3.1); float64 statistics so a standardised input maps to itself
        mean = float(x.mean(dtype=np.float64))
        std = float(x.std(dtype=np.float64))
        if not std > 0:
            return x.copy()  # a constant map: nothing to denoise
        z = ((x - mean) / std).astype(np.float32, copy=False)
        y = self.denoise_standardised(z)
        if not np.all(np.isfinite(y)):
            raise RuntimeError(
                f"the U-Net produced NaN or infinite values ({self.info.description})"
            )
        return (y * std + mean).astype(np.float32, copy=False)

    def denoise_standardised(self, z: np.ndarray) -> np.ndarray:
        """Network output for an already standardised float32 volume (no statistics touched)."""
        padded_box = max(_round_up(s, self.model.multiple) for s in z.shape)
        if padded_box <= self.max_box:
            try:
                return self._infer_whole(z)
            except torch.cuda.OutOfMemoryError:
                if self.device.type != "cuda" or self.tile >= padded_box:
                    raise
                torch.cuda.empty_cache()
                log.warning(
                    "GPU memory exhausted at box %d: tiling (%d, overlap %d)",
                    padded_box,
                    self.tile,
                    self.overlap,
                )
        return self._infer_tiled(z)

    @torch.inference_mode()
    def _run(self, block: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None, None].to(
            self.device
        )
        return self.model(t)[0, 0].float().cpu().numpy()

    def _infer_whole(self, z: np.ndarray) -> np.ndarray:
        m = self.model.multiple
        padded, crop = pad_reflect(z, tuple(_round_up(s, m) for s in z.shape))
        return np.ascontiguousarray(self._run(padded)[crop])

    def _infer_tiled(self, z: np.ndarray) -> np.ndarray:
        """Overlapping tiles, sin^2-blended; a reflected halo of overlap/2 around the volume.

        The halo gives the outermost voxels context like the whole-volume path's padding does.
        """
        tile, overlap = self.tile, self.overlap
        halo = overlap // 2
        target = tuple(max(s + 2 * halo, tile) for s in z.shape)
        padded, crop = pad_reflect(z, target)
        starts = [_tile_starts(n, tile, overlap) for n in padded.shape]
        tapers = [
            {s: _taper(tile, overlap, s > 0, s < n - tile) for s in axis_starts}
            for axis_starts, n in zip(starts, padded.shape, strict=True)
        ]
        # the tile grid is a product grid: the summed weight is separable, three 1-D arrays
        sums = []
        for axis_starts, axis_tapers, n in zip(starts, tapers, padded.shape, strict=True):
            total = np.zeros(n)
            for s in axis_starts:
                total[s : s + tile] += axis_tapers[s]
            sums.append(total)
        out = np.zeros(padded.shape, dtype=np.float32)
        for s0 in starts[0]:
            for s1 in starts[1]:
                for s2 in starts[2]:
                    sl = (slice(s0, s0 + tile), slice(s1, s1 + tile), slice(s2, s2 + tile))
                    w = (
                        tapers[0][s0][:, None, None]
                        * tapers[1][s1][None, :, None]
                        * tapers[2][s2][None, None, :]
                    )
                    out[sl] += w.astype(np.float32) * self._run(padded[sl])
        out /= sums[0].astype(np.float32)[:, None, None]  # in place, no 3-D weight array
        out /= sums[1].astype(np.float32)[None, :, None]
        out /= sums[2].astype(np.float32)[None, None, :]
        return np.ascontiguousarray(out[crop])


# --------------------------------------------------------------------------- weights file


def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(metadata) - set(_META_KEYS))
    if unknown:
        raise ValueError(f"unknown model metadata key(s) {unknown}; known: {list(_META_KEYS)}")
    meta: dict[str, Any] = {
        "voxel_size": None,
        "box": None,
        "lambda_low_res": None,
        "lambda_high_res": None,
        "description": "",
        "training": {},
    }
    meta.update(metadata)
    for key in ("voxel_size", "lambda_low_res", "lambda_high_res"):
        if meta[key] is not None:
            meta[key] = float(meta[key])
            if not meta[key] > 0:
                raise ValueError(f"{key} must be > 0 A or None, got {meta[key]}")
    if meta["box"] is not None:
        meta["box"] = int(meta["box"])
    meta["description"] = str(meta["description"])
    # weights_only=True loads only plain containers: keep "training" JSON-able
    meta["training"] = json.loads(json.dumps(meta["training"]))
    return meta


def save_model(path: str | Path, model: UNet3D, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` + ``metadata`` (keys of ``_META_KEYS``) atomically to ``path``; returns it.

    The file loads with ``torch.load(path, weights_only=True)`` (tensors and plain containers).
    """
    path = Path(path)
    meta = _check_metadata(metadata or {})
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "config": dict(model.config),
        **meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_torch_atomic(payload, path)


def save_torch_atomic(payload: Mapping[str, Any], path: Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename: a reader (the hook, a resumed
    run) never sees half a file, and a killed writer leaves the old one intact."""
    from credgui._io import atomic_open

    with atomic_open(path) as fh:
        torch.save(dict(payload), fh)
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The checked contents of a weights file; ``InputError(path, ...)`` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "U-Net weights file does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises many types for a corrupt or foreign file)
        problem = " ".join(str(exc).split())[:200]
        raise InputError(
            path, f"not a readable torch weights file ({type(exc).__name__}: {problem})"
        ) from None
    if not isinstance(raw, dict):
        raise InputError(
            path, f"not a credgui U-Net weights file (holds a {type(raw).__name__}, not a dict)"
        )
    missing = [k for k in ("state_dict", "config") if k not in raw]
    if missing:
        raise InputError(path, f"not a credgui U-Net weights file: missing {', '.join(missing)}")
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise InputError(
            path, f"incompatible weights format {fmt!r}; this credgui reads {FORMAT!r}"
        )
    return raw


def load_unet_denoiser(
    path: str | Path,
    device: str | None = "auto",
    *,
    threads: int | None = None,
    max_box: int | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
) -> UNetDenoiser:
    """Load a weights file written by ``save_model`` as a ready ``UNetDenoiser``.

    Raises ``InputError(path, ...)`` for a missing, corrupt or incompatible file.
    """
    path = Path(path)
    raw = read_model_file(path)
    try:
        model = UNet3D(raw["config"])
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"incompatible U-Net config ({exc})") from None
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise InputError(
            path, f"weights do not fit the network of its config ({first[0] if first else exc})"
        ) from None
    try:
        meta = _check_metadata({k: raw[k] for k in _META_KEYS if k in raw})
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"bad model metadata ({exc})") from None
    info = DenoiserInfo(
        name="unet",
        voxel_size=meta["voxel_size"],
        box=meta["box"],
        lambda_low_res=meta["lambda_low_res"],
        lambda_high_res=meta["lambda_high_res"],
        description=meta["description"] or f"3D U-Net from {path.name}",
    )
    log.debug("loaded U-Net %s (%s) on %s", path, model.config, device)
    return UNetDenoiser(
        model, info, device=device, threads=threads, max_box=max_box, tile=tile, overlap=overlap
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "DEFAULT_CONFIG",
    "FORMAT",
    "UNet3D",
    "UNetDenoiser",
    "count_parameters",
    "default_weights_path",
    "load_unet_denoiser",
    "read_model_file",
    "resolve_device",
    "save_model",
]
