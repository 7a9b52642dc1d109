"""Training pairs at a drawn nominal resolution: (x~, x^) with x^ the coarsened ground truth.

Why not plain "truth + noise" pairs: the paper's network is trained to map x~ to the ground truth
low-passed by the half-map FSC (Appendix A, eq. 18-19 and 26-35: the MMSE target is the
coarsened ground truth). A network trained to reproduce the full ground truth from a 10 A map
would invent detail, and the RED gradient f(x) - x would push it into the reconstruction.

``ResolutionPairs`` makes Gaussian pairs that look like RELION's intermediates (x~ = B/K):
  1. a ground-truth map from a library, a random cube rotation, an extra B-factor blur
     (the data's envelope) -> clean x, spectrum S(k) per shell;
  2. a nominal resolution R (1/R uniform in [1/res_max, 1/res_min]) and a per-shell SNR
     s(k) = s_c * exp(-b (k^2 - k_c^2) / 4) with s(1/R) = 0.143 / 0.857 (half-map FSC 0.143
     at R) and a random fall-off b; noise power N(k) = S(k) / s(k) (the spectral profile);
  3. Gaussian noise of that profile, damped in the solvent by the soft mask (paper 3.1),
     x~ = x + noise, zeroed beyond RELION's current size (a few shells past R);
  4. target x^ = FT^-1[FSC(k) FT(x)], FSC = s / (1 + s), also zero beyond the current size.
Both are standardised with x~'s mean and std (the denoiser does the same at inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from credgui.denoise.train import rotate_cube, sample_batch
from credgui.metrics.filters import shell_filter
from credgui.metrics.fsc import FSC_THRESHOLD, shell_radius
from credgui.metrics.masks import soft_mask_sigma


def shell_power(spectrum: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    """Mean |F|^2 per integer shell 0..n_shells-1 (rfft half-space, enough for a profile)."""
    p = np.bincount(
        shells.ravel(), weights=(np.abs(spectrum) ** 2).ravel(), minlength=n_shells
    )
    c = np.bincount(shells.ravel(), minlength=n_shells)
    return p[:n_shells] / np.maximum(c[:n_shells], 1)


def coarsened_truth(
    truth: np.ndarray, fsc: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """x^ = scale * FT^-1[FSC(shell) FT(truth)] (eq. 18-19): the ground truth low-passed by an FSC.

    fsc: per integer shell (index round(|k| * box)); negative values count as 0, shells beyond
    the array as 0.
    """
    transfer = np.clip(np.nan_to_num(np.asarray(fsc, float)), 0.0, 1.0)
    return (scale * shell_filter(truth.astype(np.float64), transfer)).astype(np.float32)


@dataclass(frozen=True)
class PairSettings:
    """Ranges drawn per sample (see the module docstring)."""

    res_min: float = 3.0  # A, best nominal resolution
    res_max: float = 16.0  # A, worst
    snr_falloff: tuple[float, float] = (40.0, 400.0)  # b in A^2 of s(k)
    blur: tuple[float, float] = (0.0, 80.0)  # extra B-factor of the clean map, A^2
    solvent_damping: tuple[float, float] = (0.3, 1.0)  # noise factor in the solvent
    extra_shells: tuple[int, int] = (
        2,
        12,
    )  # current size: shells past R kept (RELION's margin)
    max_snr: float = 1e3

    @classmethod
    def from_dict(cls, d: dict) -> PairSettings:
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


class ResolutionPairs:
    """Pairs (x~, x^) from ground-truth maps at random nominal resolutions; see the module doc.

    maps: (N, box, box, box) float32 ground truths at ``voxel_size`` A; the training box is the
    maps' box (they are whole particles, centred, as RELION's maps are).
    """

    def __init__(
        self,
        maps: np.ndarray,
        voxel_size: float,
        settings: PairSettings = PairSettings(),
        masks: np.ndarray | None = None,
    ) -> None:
        if maps.ndim != 4 or len(maps) == 0:
            raise ValueError(
                f"maps must be a non-empty (N, box, box, box) array, got {maps.shape}"
            )
        self.maps = maps
        self.box = int(maps.shape[1])
        self.n_maps = len(maps)
        self.voxel_size = float(voxel_size)
        self.settings = settings
        self.masks = (
            np.stack([soft_mask_sigma(m) for m in maps]) if masks is None else masks
        )
        self.radius = shell_radius((self.box,) * 3)
        self.shells = np.rint(self.radius).astype(np.int64)
        self.k2 = (self.radius / (self.box * self.voxel_size)) ** 2  # (1/A)^2

    def sample(
        self,
        rng: np.random.Generator,
        resolution: float | None = None,
        index: int | None = None,
        rotation: int | None = None,
        with_truth: bool = False,
    ) -> tuple:
        """(input, target, nominal resolution A); input and target standardised by the input.

        resolution, index, rotation (0..23): fixed instead of drawn. with_truth: append the
        clean map x itself (same standardisation; for the paper's Fig. 1c ratio against the
        ground truth); the random draws are the same either way.
        """
        st, box = self.settings, self.box
        i = int(rng.integers(len(self.maps))) if index is None else int(index)
        k = int(rng.integers(24)) if rotation is None else int(rotation)
        clean = np.ascontiguousarray(rotate_cube(self.maps[i], k), dtype=np.float64)
        mask = np.ascontiguousarray(rotate_cube(self.masks[i], k))
        if resolution is None:
            inv = rng.uniform(1.0 / st.res_max, 1.0 / st.res_min)
            resolution = 1.0 / inv
        kc2 = 1.0 / resolution**2
        blur = rng.uniform(*st.blur)
        falloff = rng.uniform(*st.snr_falloff)
        damping = rng.uniform(*st.solvent_damping)
        cut = min(
            box // 2,
            int(np.ceil(box * self.voxel_size / resolution))
            + int(rng.integers(st.extra_shells[0], st.extra_shells[1] + 1)),
        )

        f_clean = np.fft.rfftn(clean) * np.exp(-blur * self.k2 / 4.0)
        n_shells = box // 2 + 2
        signal = shell_power(f_clean, self.shells, n_shells)
        s_c = FSC_THRESHOLD / (1 - FSC_THRESHOLD)
        snr = np.minimum(s_c * np.exp(-falloff * (self.k2 - kc2) / 4.0), st.max_snr)
        inside = self.shells <= cut
        fsc = np.where(inside, snr / (1 + snr), 0.0)
        noise_amp = np.sqrt(signal[np.minimum(self.shells, n_shells - 1)] / snr)
        # white noise in Fourier space: irfftn of rfftn(real white) keeps Hermitian symmetry
        white = np.fft.rfftn(rng.standard_normal((box, box, box))) / np.sqrt(box**3)
        f_noise = white * noise_amp
        noise = np.fft.irfftn(f_noise, s=(box,) * 3, axes=(0, 1, 2))
        noise *= damping + (1 - damping) * mask
        f_noisy = np.where(inside, f_clean + np.fft.rfftn(noise), 0)
        noisy = np.fft.irfftn(f_noisy, s=(box,) * 3, axes=(0, 1, 2))
        target = np.fft.irfftn(f_clean * fsc, s=(box,) * 3, axes=(0, 1, 2))
        mean, std = float(noisy.mean()), float(noisy.std())
        if not std > 0:
            std = 1.0
        out = (
            ((noisy - mean) / std).astype(np.float32),
            ((target - mean) / std).astype(np.float32),
            float(resolution),
        )
        if with_truth:
            truth = np.fft.irfftn(f_clean, s=(box,) * 3, axes=(0, 1, 2))
            return (*out, ((truth - mean) / std).astype(np.float32))
        return out

    def batch(self, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch of ``step`` (deterministic in seed and step): (size, 1, box^3) x2."""
        return sample_batch(self.sample, seed, step, size)


__all__ = [
    "MixedPairs",
    "PairSettings",
    "ResolutionPairs",
    "coarsened_truth",
    "shell_power",
]


class MixedPairs:
    """Samples from ``first`` with probability ``fraction``, else from ``second`` (same box and
    voxel size): RELION intermediates mixed with Gaussian pairs, as the issue suggests."""

    def __init__(self, first, second, fraction: float) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"mix fraction must be in [0, 1], got {fraction}")
        if first.box != second.box or abs(first.voxel_size - second.voxel_size) > 1e-6:
            raise ValueError(
                f"mixed sources differ: box {first.box} vs {second.box}, "
                f"voxel size {first.voxel_size} vs {second.voxel_size}"
            )
        self.first, self.second, self.fraction = first, second, fraction
        self.box, self.voxel_size = first.box, first.voxel_size

    def sample(self, rng: np.random.Generator):
        src = self.first if rng.uniform() < self.fraction else self.second
        return src.sample(rng)

    def batch(self, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch of ``step`` (deterministic in seed and step): (size, 1, box^3) x2."""
        return sample_batch(self.sample, seed, step, size)


def fixed_pairs(
    source: ResolutionPairs,
    resolutions: list[float],
    per_resolution: int,
    seed: int = 0,
):
    """A reproducible set of pairs at given nominal resolutions (for validation curves):
    ``per_resolution`` pairs per resolution, cycling through the source's maps. Returns a list
    of ``credgui.denoise.intermediates.Intermediate`` (input and target standardised by the input)."""
    from credgui.denoise.intermediates import Intermediate

    out = []
    for r_index, res in enumerate(resolutions):
        for j in range(per_resolution):
            rng = np.random.default_rng([seed, r_index, j])
            x, y, r, t = source.sample(
                rng,
                resolution=res,
                index=(r_index * per_resolution + j) % len(source.maps),
                with_truth=True,
            )
            out.append(Intermediate("gaussian", 0, 0, r, 1.0, x, y, t))
    return out
