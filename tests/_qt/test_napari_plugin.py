"""credgui as a napari plugin: reader (.mrc maps in Angstrom, RELION job directories into
credgui's widgets), sample data, the manifest and classifier. Real napari under Xvfb."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pyqtgraph")

from tests._qt.helpers import wait_until

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parents[2]


def _register_credgui():
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "credgui" not in pm:  # napari's test fixture starts from an empty plugin manager
        pm.register(PluginManifest.from_distribution("credgui"))
    return pm


def test_manifest_has_readers_sample_data_and_the_napari_classifier():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("credgui")
    readers = manifest.contributions.readers
    assert any("*.mrc" in r.filename_patterns for r in readers)
    assert any(r.accepts_directories for r in readers)
    assert [s.key for s in manifest.contributions.sample_data] == ["demo"]
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    assert "Framework :: napari" in classifiers


def test_mrc_opens_scaled_in_angstrom(make_napari_viewer, tmp_path):
    from credgui.relion.mrc import write_mrc_atomic

    _register_credgui()
    path = tmp_path / "map.mrc"
    data = np.random.default_rng(0).standard_normal((16, 16, 16)).astype(np.float32)
    write_mrc_atomic(path, data, 2.2)
    viewer = make_napari_viewer(show=False)
    layers = viewer.open(path, plugin="credgui")
    assert len(layers) == 1 and layers[0].name == "map"
    assert np.allclose(layers[0].scale, (2.2, 2.2, 2.2))
    assert np.array_equal(layers[0].data, data)
    from credgui._qt.reader import get_reader

    assert get_reader(tmp_path / "particles.star") is None and get_reader(tmp_path) is None


def test_job_directory_opens_in_credgui_widgets_with_layers_in_angstrom(make_napari_viewer, finished_job, qtbot):
    from credgui._qt.reader import widgets_of
    from credgui.relion.mrc import read_voxel_size

    _register_credgui()
    viewer = make_napari_viewer(show=True)
    viewer.open(finished_job, plugin="credgui")
    widgets = widgets_of(viewer)
    assert widgets is not None and set(widgets) == {"Launch", "Lambda", "Monitor and maps", "Plots"}
    monitor = widgets["Monitor and maps"]
    assert Path(monitor.session.job_dir) == Path(finished_job)
    wait_until(qtbot, lambda: len(monitor.layers.image_layers()) >= 2, timeout_s=60)
    voxel = read_voxel_size(next(finished_job.glob("run_it*_half1_class001.mrc")))
    for layer in monitor.layers.image_layers():
        assert np.allclose(layer.scale, (voxel,) * 3), layer.name
    # opening a second job reuses the docked widgets
    viewer.open(finished_job, plugin="credgui")
    assert widgets_of(viewer) is widgets
    monitor.session.stop_watching()


def test_demo_sample_data(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("CREDGUI_SAMPLE_DIR", str(tmp_path / "demo_data"))
    _register_credgui()
    viewer = make_napari_viewer(show=False)
    layers = viewer.open_sample("credgui", "demo")
    names = [layer.name for layer in layers]
    assert names[0] == "demo ground truth" and len(names) == 3
    assert all(np.allclose(layer.scale, (2.2, 2.2, 2.2)) for layer in layers)
    assert layers[0].data.shape == (64, 64, 64)


def test_qt_binding_is_the_one_asked_for(make_napari_viewer):
    """CI runs the GUI tests under PyQt5 and again under QT_API=pyqt6: the run must really use it."""
    import os

    import qtpy

    viewer = make_napari_viewer(show=False)
    assert viewer.window._qt_window is not None
    wanted = os.environ.get("PYTEST_QT_API") or "pyqt5"  # pyproject's qt_api, else the override
    assert qtpy.API_NAME.lower() == wanted.lower()
