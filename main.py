"""Open napari with credgui's widgets: ``python main.py [JOB_DIR]``.

JOB_DIR: a RELION Refine3D job directory (running or finished) to inspect, e.g.
``python main.py Refine3D/job012``. The same as ``credgui gui [JOB_DIR]``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from credgui.cli import main as cli_main

    argv = sys.argv[1:] if argv is None else argv
    return cli_main(["gui", *argv])


if __name__ == "__main__":
    sys.exit(main())
