"""Test-only denoiser plugin for the hook's tests: f(x) = scale * x, at a chosen voxel size.

Options: ``scale`` (float, default 1: identity; 0: returns zeros), ``voxel_size`` (A, default
None: the map's own sampling), ``log`` (path: appends the input shape and std per call).
Found through ``$CREDGUI_PLUGIN_PATH`` = this folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from credgui.denoise.base import DenoiserInfo

NAME = "test-scale"


class Scale:
    def __init__(self, scale: float, voxel_size: float | None, log: str | None) -> None:
        self.info = DenoiserInfo(name=NAME, voxel_size=voxel_size, lambda_low_res=None, lambda_high_res=None)
        self.scale = scale
        self.log = log

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{volume.shape[0]} {float(volume.mean()):.6f} {float(volume.std()):.6f}\n")
        return (self.scale * np.asarray(volume, dtype=np.float32)).astype(np.float32)


def create(options: dict[str, Any]) -> Scale:
    vs = options.get("voxel_size")
    return Scale(float(options.get("scale", 1.0)), float(vs) if vs is not None else None, options.get("log"))
