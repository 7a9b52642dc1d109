"""GUI tests: real napari windows under a private Xvfb (tests/fixtures/display.py).

Every test module here sets ``pytestmark = pytest.mark.gui`` and importorskips napari.
The display starts before pytest-qt's QApplication (a
session-scoped autouse fixture is set up before the ones a test asks for).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _gui_display(xvfb_display):
    return xvfb_display


@pytest.fixture(scope="session")
def finished_job(request) -> Path:
    """A finished real RELION refinement directory: the shared ``tiny_refine_job``, or the one
    named by ``$CREDGUI_TEST_FINISHED_JOB`` (to iterate on the GUI without re-running RELION)."""
    given = os.environ.get("CREDGUI_TEST_FINISHED_JOB")
    if given:
        return Path(given)
    try:
        job = request.getfixturevalue("tiny_refine_job")
    except pytest.FixtureLookupError:
        pytest.skip("tests/fixtures/relion.py (tiny_refine_job) is not available")
    return Path(getattr(job, "job_dir", job))


