"""The denoiser plugin interface.

A denoiser is a callable on a real-space volume plus metadata. The hook hands it the
standardised unregularised map x~ (zero mean, unit std; paper section 3.1), already resampled to
``info.voxel_size``, and undoes the standardisation and resampling afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class DenoiserInfo:
    """What the hook needs to know about a denoiser.

    voxel_size: native voxel size in A (None: works at any voxel size).
    box: training box in voxels (None: any box); informative, inference takes any box.
    lambda_low_res, lambda_high_res: the model's own suggested ramp (A) from its confidence
        curve, used when the job's configuration leaves them unset.
    """

    name: str
    voxel_size: float | None = None
    box: int | None = None
    lambda_low_res: float | None = None
    lambda_high_res: float | None = None
    description: str = ""


@runtime_checkable
class Denoiser(Protocol):
    info: DenoiserInfo

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        """(N, N, N) float32 real-space volume (z, y, x), standardised -> same shape, denoised."""
        ...
