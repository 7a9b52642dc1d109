"""Test-only denoiser plugin that breaks symmetry: f(x) = x + an off-centre Gaussian blob.

Options: ``amplitude`` (in units of the input's standard deviation, default 5), ``offset``
(voxels along x from the centre, default box / 5). Found through ``$CREDGUI_PLUGIN_PATH``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from credgui.denoise.base import DenoiserInfo

NAME = "test-asym"


class Asym:
    def __init__(self, amplitude: float, offset: float | None) -> None:
        self.info = DenoiserInfo(name=NAME, voxel_size=None, lambda_low_res=None, lambda_high_res=None)
        self.amplitude = amplitude
        self.offset = offset

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        v = np.asarray(volume, dtype=np.float32)
        n = v.shape[0]
        c = np.arange(n) - n // 2
        off = self.offset if self.offset is not None else n / 5
        blob = (np.exp(-(c[None, None, :] - off) ** 2 / 8.0) * np.exp(-(c[None, :, None] - n / 9) ** 2 / 8.0)
                * np.exp(-(c[:, None, None] - n / 7) ** 2 / 8.0))
        return (v + self.amplitude * float(v.std()) * blob).astype(np.float32)


def create(options: dict[str, Any]) -> Asym:
    off = options.get("offset")
    return Asym(float(options.get("amplitude", 5.0)), float(off) if off is not None else None)
