"""Open napari with credgui's launch, monitor/maps, plots and lambda panels.

Examples:
  credgui gui                      # empty window: launch a refinement from the Launch panel
  credgui gui Refine3D/job012      # inspect a job directory (running or finished)

The same panels are a napari plugin: ``napari -w credgui``. Needs the GUI extras
(``pip install credgui[gui]``) and a display (on a headless node: ``xvfb-run credgui gui``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from credgui.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_dir", nargs="?", type=Path, help="RELION Refine3D job directory to open")


def main(args: argparse.Namespace) -> int:
    job_dir = args.job_dir
    if job_dir is not None and not job_dir.is_dir():
        raise InputError(job_dir, "not a directory; give a RELION Refine3D/jobNNN directory")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise InputError(None, "no display (DISPLAY is not set); run under X, or `xvfb-run credgui gui`")
    try:
        from credgui._qt.app import run
    except ImportError as exc:
        raise InputError(None, f"the GUI needs napari and Qt ({exc}); install with `pip install credgui[gui]`") from None
    return run(job_dir)
