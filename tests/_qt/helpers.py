"""Helpers for the GUI tests: waiting, screenshots, replaying a finished job as if running."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

SCREENS = Path("/tmp/credgui_screens")
"""One copy of each screenshot goes here for people to look at."""


def wait_until(qtbot, predicate, timeout_s: float = 30.0, step_ms: int = 20) -> float:
    """Process Qt events until ``predicate()``; returns the seconds waited (fails on timeout)."""
    t0 = time.monotonic()
    qtbot.waitUntil(predicate, timeout=int(timeout_s * 1000))
    return time.monotonic() - t0


def screenshot_stats(img: np.ndarray) -> tuple[float, float]:
    """(pixel std, fraction of pixels differing from the most common colour by > 30 levels)."""
    rgb = np.asarray(img)[..., :3].astype(np.int16)
    flat = rgb.reshape(-1, 3)
    colours, counts = np.unique(flat[:: max(1, flat.shape[0] // 200_000)], axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    differs = np.abs(rgb - background).max(axis=-1) > 30
    return float(rgb.std()), float(differs.mean())


def save_screenshot(img: np.ndarray, path: Path, share: bool = True) -> Path:
    from skimage.io import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(path), np.asarray(img)[..., :3].astype(np.uint8), check_contrast=False)
    if share:
        SCREENS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENS / path.name)
    return path


def iteration_of(name: str) -> int | None:
    """RELION iteration number in a file name (``run_it003_...`` -> 3), None for other files."""
    import re

    m = re.match(r"run_it(\d+)_", name)
    return int(m.group(1)) if m else None


# RELION writes an iteration's maps first and its STAR files last; replay in that order
def _replay_order(path: Path) -> tuple[int, str]:
    return (1 if path.suffix == ".star" else 0, path.name)


class JobReplay:
    """Copies a finished job's files into ``target`` one iteration at a time, as RELION wrote
    them (maps, then STAR files), to watch the GUI follow a job that is "running"."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source, self.target = source, target
        target.mkdir(parents=True, exist_ok=True)
        self.by_iteration: dict[int, list[Path]] = {}
        self.hook_lines: dict[int, list[str]] = {}
        for path in sorted(source.iterdir()):
            n = iteration_of(path.name)
            if n is not None and path.is_file():
                self.by_iteration.setdefault(n, []).append(path)
        hook = source / "credgui_hook.jsonl"
        if hook.exists():
            import json

            for line in hook.read_text().splitlines():
                try:
                    n = int(json.loads(line).get("iteration"))
                except (ValueError, TypeError):
                    continue
                self.hook_lines.setdefault(n, []).append(line)
        for name in ("note.txt", "credgui.toml", "default_pipeline.star"):
            if (source / name).exists():
                shutil.copy2(source / name, target / name)

    @property
    def iterations(self) -> list[int]:
        return sorted(self.by_iteration)

    def copy_iteration(self, n: int, skip: tuple[str, ...] = ()) -> float:
        """Copy iteration ``n``; returns time.time() when its last file appeared."""
        if n in self.hook_lines:
            with (self.target / "credgui_hook.jsonl").open("a") as fh:
                fh.write("\n".join(self.hook_lines[n]) + "\n")
        for path in sorted(self.by_iteration[n], key=_replay_order):
            if any(s in path.name for s in skip):
                continue
            tmp = self.target / f".{path.name}.part"
            shutil.copy2(path, tmp)
            os.replace(tmp, self.target / path.name)
        for name in ("run.out", "run.err"):
            if (self.source / name).exists():
                shutil.copy2(self.source / name, self.target / name)
        return time.time()
