"""Test-only denoiser plugin that misbehaves while denoising (tests/recon/test_hook_edges.py).

Options: ``marker`` (path: touched when the call starts), ``sleep_s`` (float: then sleeps),
``exit`` (int: then calls ``sys.exit(exit)``, as a careless plugin might).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from credgui.denoise.base import DenoiserInfo

NAME = "test-misbehave"


class Misbehave:
    def __init__(self, options: dict[str, Any]) -> None:
        self.info = DenoiserInfo(name=NAME, voxel_size=None, lambda_low_res=None, lambda_high_res=None)
        self.options = options

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        if self.options.get("marker"):
            Path(self.options["marker"]).touch()
        time.sleep(float(self.options.get("sleep_s", 0.0)))
        if "exit" in self.options:
            sys.exit(int(self.options["exit"]))
        return np.asarray(volume, dtype=np.float32)


def create(options: dict[str, Any]) -> Misbehave:
    return Misbehave(options)
