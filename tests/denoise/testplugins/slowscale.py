"""A test-only denoiser plugin: sleeps, returns 2 * volume, logs its busy interval.

Options: ``sleep_s`` (float), ``log`` (path: one "start end" line of time.time() per call).
Used by tests/denoise/test_worker.py (found through $CREDGUI_PLUGIN_PATH) to see the
worker's queueing and to have a request in flight when the worker is killed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from credgui.denoise.base import DenoiserInfo

NAME = "test-slowscale"


class SlowScale:
    def __init__(self, sleep_s: float, log: str | None) -> None:
        self.info = DenoiserInfo(name=NAME, voxel_size=2.0, description="test plugin")
        self.sleep_s = sleep_s
        self.log = log

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        start = time.time()
        time.sleep(self.sleep_s)
        end = time.time()
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{start!r} {end!r}\n")
        return 2.0 * np.asarray(volume, dtype=np.float32)


def create(options: dict[str, Any]) -> SlowScale:
    return SlowScale(float(options.get("sleep_s", 0.0)), options.get("log"))
