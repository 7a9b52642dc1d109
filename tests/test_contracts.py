"""The import contracts ([tool.importlinter] in pyproject.toml) and the linter ([tool.ruff]) hold,
and each fails on a planted violation (so `.ci/run` and this test can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: the checkout under test (the venv's editable install may point elsewhere)
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_import_contracts_hold():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "credgui", tmp_path / "credgui", ignore=shutil.ignore_patterns("__pycache__", "_resources"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module,planted,expected", [
    # a Qt import in the core (credgui.recon imports metrics.fsc too, so both contracts see it)
    ("metrics/fsc.py", "import qtpy", ["credgui.metrics.fsc -> qtpy",
                                       "the science core imports no Qt, napari or pyqtgraph BROKEN"]),
    # scipy at import in recon (the hook's start-up)
    ("recon/schedule.py", "import scipy.ndimage", ["credgui.recon.schedule -> scipy"]),
    # a circle between subpackages: metrics (the floor) importing recon (above it)
    ("metrics/angles.py", "import credgui.recon.schedule", ["credgui.metrics.angles -> credgui.recon.schedule"]),
])
def test_a_planted_violation_breaks_a_contract(tmp_path, module, planted, expected):
    shutil.copytree(ROOT / "credgui", tmp_path / "credgui", ignore=shutil.ignore_patterns("__pycache__", "_resources"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "credgui" / module
    path.write_text(path.read_text().replace("import numpy as np\n", f"import numpy as np\n{planted}  # planted\n", 1))
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    for text in expected:
        assert text in out.stdout, out.stdout[-3000:]


def test_ruff_passes_and_fails_on_a_blind_except(tmp_path):
    ruff = str(BIN / "ruff")
    out = subprocess.run([ruff, "check", "credgui", "tests", "bench", "plugins", "main.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-4000:]
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    try:\n        return 1\n    except Exception:\n        return 0\n")
    out = subprocess.run([ruff, "check", "--config", str(ROOT / "pyproject.toml"), str(bad)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "BLE001" in out.stdout
