"""Shared fixtures. Each fixture module has one owner; add new fixture modules here."""

import importlib.util

pytest_plugins = [
    name
    for name in (
        "tests.fixtures.data",  # simulated data sets (credgui.simulate)
        "tests.fixtures.relion",  # real RELION runs (credgui.jobs)
        "tests.fixtures.slurm",  # a private single-node Slurm
        "tests.fixtures.display",  # Xvfb for napari
    )
    if importlib.util.find_spec(name) is not None
]
