"""One progress record for every long task, one duration format, one CLI progress bar.

Long work is a generator yielding ``Progress`` (simulating a data set, training, building
ground-truth libraries, RELION-faithful pairs, the benchmark runner); the CLI shows it with
``ProgressBar`` or ``Progress.line``, the GUI's workers read the same fields. What a task makes
along the way (a manifest, a training step's losses, a benchmark record, a map) rides in
``result``, so the consumers that only show progress need not know the task.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["Progress", "ProgressBar", "eta_s", "format_duration"]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of ``task`` ("simulate", "train", "groundtruth",
    "reconstruct", "benchmark"), in its current ``stage`` (e.g. map, project, noise, write, done
    for a simulation; the event kind for the benchmark). ``item``: what the step is about (a
    benchmark run id, a model), or None. ``elapsed_s`` since the task started and ``eta_s`` (time
    left, estimated) when known. ``result``: what the step produced, task-specific."""

    task: str
    stage: str
    done: int
    total: int
    message: str = ""
    item: str | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    result: Any = None

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 when there is nothing to do)."""
        return min(1.0, self.done / self.total) if self.total else 1.0

    def line(self) -> str:
        """One line for a log: ``[done/total] item: message`` (no counter without an item)."""
        where = f"[{self.done}/{self.total}] {self.item}: " if self.item else ""
        return f"{where}{self.message}"


def eta_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Time left if the remaining steps take as long as the done ones did (None before any)."""
    if done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, elapsed_s / done * (total - done))


def format_duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``-`` when unknown (None, NaN, inf). Status, demo, benchmark and
    the GUI's monitor all show durations this way."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = int(round(seconds))
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line progress bar on a terminal (a line per finished stage when the stream is not
    a terminal, so logs stay readable); call it with each ``Progress``."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.stage: str | None = None

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        if self.tty:
            width = 30
            fill = int(round(width * p.fraction))
            eta = f" {format_duration(p.eta_s)} left" if p.eta_s is not None and p.stage != "done" else ""
            self.stream.write(f"\r{p.stage:<8}[{'#' * fill}{'.' * (width - fill)}] {p.done}/{p.total} "
                              f"{p.message[:40]:<40}{eta}")
            if p.stage == "done":
                self.stream.write("\n")
            self.stream.flush()
        elif p.done == p.total and p.stage != self.stage:
            self.stage = p.stage
            print(f"{p.stage}: {p.message}", file=self.stream, flush=True)
