"""credgui's napari widgets on real windows (Xvfb): a finished job, a job that grows while the
window is open (UI heartbeat and update latency), the lambda panel, bad input and crashes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pyqtgraph")
pytest.importorskip("skimage")

from tests._qt.helpers import (
    SCREENS,
    JobReplay,
    save_screenshot,
    screenshot_stats,
    wait_until,
)

pytestmark = pytest.mark.gui


def _open(make_napari_viewer, qtbot, job_dir=None):
    from credgui._qt.app import open_viewer

    viewer = make_napari_viewer(show=True, title="credgui test")
    viewer.window._qt_window.resize(1700, 1050)
    viewer, widgets = open_viewer(job_dir, viewer=viewer)
    return viewer, widgets


def _close(viewer):
    from credgui._qt.session import session_for

    session_for(viewer).stop_watching()


def _n_iterations(widgets) -> int:
    from credgui._qt import _state

    state = widgets["Monitor and maps"].session.state
    return len(_state.state_iterations(state)) if state is not None else 0


def _last_iteration(job_dir: Path) -> int:
    from credgui._qt import _state
    from credgui.jobs.watch import scan_job

    return _state.iteration_number(_state.state_iterations(scan_job(job_dir))[-1])


def _assert_not_blank(img, name: str, tmp_path: Path, min_std: float = 10.0, min_fraction: float = 0.05):
    path = save_screenshot(img, tmp_path / name)
    std, fraction = screenshot_stats(img)
    assert std > min_std and fraction > min_fraction, f"{path} looks blank: std {std:.1f}, non-background {fraction:.3f}"
    return std, fraction


def test_manifest_contributes_four_widgets(make_napari_viewer):
    """`napari -w credgui` finds the four panels through the npe2 manifest."""
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_distribution("credgui")  # through the napari.manifest entry point
    names = sorted(w.display_name for w in manifest.contributions.widgets)
    assert names == ["Lambda", "Launch", "Monitor and maps", "Plots"]
    viewer = make_napari_viewer(show=False)
    pm = PluginManager.instance()
    if "credgui" not in pm:  # napari's test fixture starts from an empty plugin manager
        pm.register(manifest)
    _dock, widget = viewer.window.add_plugin_dock_widget("credgui", "Plots")
    assert type(widget).__name__ == "PlotsWidget"


def test_finished_job_shows_layers_and_curves(make_napari_viewer, finished_job, tmp_path, qtbot):
    from credgui._qt.maps import MapLayers

    viewer, widgets = _open(make_napari_viewer, qtbot, finished_job)
    monitor, plots = widgets["Monitor and maps"], widgets["Plots"]
    last = _last_iteration(finished_job)
    files_before = sorted(p.name for p in finished_job.iterdir())
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == last, timeout_s=60)
    names = [layer.name for layer in viewer.layers]
    for kind in ("half1_reg", "half2_reg"):
        assert MapLayers.image_name(kind) in names
        assert MapLayers.surface_name(kind) in names
    n_curves = len(plots.half_curves)
    assert n_curves == _n_iterations(widgets) or n_curves == _n_iterations(widgets) - 1  # it000 may lack FSC
    assert "0.143 at" in plots.captions["fsc_halves"].text()
    assert monitor.fields["status"].text() == "finished"
    ctx = monitor.session.context
    if ctx is not None and ctx.true_poses is not None:  # a simulated data set: angular error vs truth
        qtbot.waitUntil(lambda: "median" in plots.captions["angles"].text(), timeout=60000)
    if (finished_job / "credgui_hook.jsonl").exists():  # run with credgui's hook
        assert plots.captions["lambda"].text().startswith("latest lambda")
        assert "hook, iteration" in widgets["Lambda"].used.text()
    # the slider scrubs back to an earlier iteration; "latest" follows the run again
    first = monitor.slider.minimum()
    monitor.slider.setValue(first)
    assert not monitor.follow.isChecked()
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == first, timeout_s=30)
    monitor.follow.setChecked(True)
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == last, timeout_s=30)

    # central slices, side by side in the grid
    qtbot.wait(300)
    img = viewer.screenshot(canvas_only=False, flash=False)
    _assert_not_blank(img, "credgui_finished_slices.png", tmp_path)
    # isosurfaces
    monitor.mode_combo.setCurrentIndex(1)
    assert viewer.dims.ndisplay == 3
    assert all(layer.visible for layer in monitor.layers.surface_layers())
    qtbot.wait(300)
    img = viewer.screenshot(canvas_only=True, flash=False)
    _assert_not_blank(img, "credgui_finished_surfaces.png", tmp_path, min_fraction=0.02)
    # the shared contour moves every surface (marching cubes again, in a worker)
    before = [len(layer.data[1]) for layer in monitor.layers.surface_layers()]
    monitor.level_spin.setValue(monitor.level_spin.value() + 1.0)
    qtbot.waitUntil(lambda: [len(l.data[1]) for l in monitor.layers.surface_layers()] != before, timeout=20000)
    assert all(layer.iso_threshold == monitor.level_spin.value() for layer in monitor.layers.image_layers())
    # volume rendering (iso) as an option, and back to slices in another plane
    monitor.mode_combo.setCurrentIndex(2)
    assert viewer.dims.ndisplay == 3 and all(l.visible for l in monitor.layers.image_layers())
    qtbot.wait(300)
    _assert_not_blank(viewer.screenshot(canvas_only=True, flash=False), "credgui_finished_volume.png", tmp_path,
                      min_fraction=0.02)
    monitor.mode_combo.setCurrentIndex(0)
    monitor.plane_combo.setCurrentIndex(1)
    assert viewer.dims.ndisplay == 2 and tuple(viewer.dims.order) == (1, 0, 2)
    # export: every plot (PNG + SVG), the slices, the CSV
    written = plots.export_plots(tmp_path / "plots")
    assert len(written) == 10 and all(p.stat().st_size > 1000 for p in written)
    shutil.copy(tmp_path / "plots" / "credgui_fsc_halves.png", SCREENS / "credgui_fsc_halves.png")
    assert sorted(p.name for p in finished_job.iterdir()) == files_before  # inspecting writes nothing
    csv_path = plots.export_csv(tmp_path / "iterations.csv")
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 1 + _n_iterations(widgets)
    monitor.export_slices(tmp_path / "slices")
    qtbot.waitUntil(lambda: len(monitor.exported) >= 3, timeout=20000)
    names = sorted(p.name for p in monitor.exported)
    assert "credgui_view.png" in names and "credgui_slices.svg" in names
    svg = (tmp_path / "slices" / "credgui_slices.svg").read_text()
    assert svg.count("<image") == len(monitor.layers.kinds) and "ground truth" in svg
    shutil.copy(tmp_path / "slices" / "credgui_slices.svg", SCREENS / "credgui_slices.svg")
    _close(viewer)


def test_growing_job_heartbeat_and_latency(make_napari_viewer, finished_job, tmp_path, qtbot):
    """Iterations appear while the window is open: the UI thread never stalls > 200 ms and the
    maps of each new iteration are shown within a few seconds of its files appearing."""
    import dataclasses

    from qtpy.QtCore import QTimer

    from credgui._qt.session import find_context

    replay = JobReplay(finished_job, tmp_path / "Refine3D" / "job001")
    its = replay.iterations
    replay.copy_iteration(its[0])
    viewer, widgets = _open(make_napari_viewer, qtbot, replay.target)
    monitor = widgets["Monitor and maps"]
    # the truth of the original job (ground truth, mask, true poses): FSC vs truth and angular
    # errors are computed for every iteration too, as for a simulated data set
    truth = find_context(finished_job)
    monitor.session.set_context(dataclasses.replace(truth, job_dir=monitor.session.job_dir))
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == its[0], timeout_s=60)

    gaps: list[float] = []
    cpu: list[float] = []  # CPU time of the UI thread itself in each heartbeat interval
    last_tick = [time.monotonic(), time.thread_time()]

    def beat():
        now, now_cpu = time.monotonic(), time.thread_time()
        gaps.append(now - last_tick[0])
        cpu.append(now_cpu - last_tick[1])
        last_tick[:] = [now, now_cpu]

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(beat)
    timer.start()
    latencies = []
    try:
        for n in its[1:]:
            appeared = replay.copy_iteration(n)  # (on this thread: not counted as a gap)
            last_tick[:] = [time.monotonic(), time.thread_time()]
            wait_until(qtbot, lambda n=n: monitor.last_load.get("iteration") == n, timeout_s=60)
            latencies.append(monitor.last_load["shown_wall"] - appeared)
    finally:
        timer.stop()
    max_gap = max(gaps)
    report = {
        "iterations": len(its) - 1,
        "max_ui_gap_ms": round(1000 * max_gap, 1),
        "p99_ui_gap_ms": round(1000 * float(np.percentile(gaps, 99)), 1),
        "max_ui_thread_cpu_per_beat_ms": round(1000 * max(cpu), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "latency_s": [round(x, 3) for x in latencies],
        "max_latency_s": round(max(latencies), 3),
        "layers": len(viewer.layers),
        "box": int(monitor.layers.image_layers()[0].data.shape[0]),
    }
    SCREENS.mkdir(parents=True, exist_ok=True)
    (SCREENS / "credgui_gui_timing.json").write_text(json.dumps(report, indent=1))
    print("credgui GUI timing:", report)
    # The UI thread itself never works > 200 ms at a stretch (issue 14's bar for a stall; one
    # layer update at box 40 measured 60-100 ms of UI-thread CPU on the CI machine, 160-170 ms on
    # a slower 2-core VM, software GL); the wall-clock gap also includes time this process is not
    # scheduled, so it is held to 300 ms unless the machine is oversubscribed (other jobs on the
    # cores; measured 50 ms gaps in an idle napari at load 7).
    assert max(cpu) < 0.2, report
    oversubscribed = os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1)
    if not oversubscribed:
        assert max_gap < 0.3, report
    assert max(latencies) < 10.0, report
    _close(viewer)


def test_lambda_change_reaches_credgui_toml(make_napari_viewer, finished_job, tmp_path, qtbot):
    from credgui.config import parse_config

    replay = JobReplay(finished_job, tmp_path / "job")
    replay.copy_iteration(replay.iterations[0])
    viewer, widgets = _open(make_napari_viewer, qtbot, replay.target)
    panel = widgets["Lambda"]
    panel.auto.setChecked(False)
    panel.low.setValue(12.0)
    panel.high.setValue(6.0)
    panel.lam_max.setValue(0.8)
    assert panel.apply_btn.isEnabled()
    panel.apply_btn.click()
    wait_until(qtbot, lambda: panel.last_written is not None, timeout_s=10)
    config = parse_config(replay.target / "credgui.toml")
    assert (config.lambda_low_res, config.lambda_high_res, config.lambda_max) == (12.0, 6.0, 0.8)
    # the ramp drawn is 0 worse than 12 A and 0.8 better than 6 A
    x, y = panel.curve.getData()
    res = 1.0 / x
    assert np.allclose(y[res > 12.0], 0.0) and np.allclose(y[res < 6.0], 0.8)
    # an impossible ramp is refused in the panel, not written
    panel.high.setValue(20.0)
    assert not panel.apply_btn.isEnabled() and "finer" in panel.banner.text()
    img = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(img, tmp_path / "credgui_lambda_panel.png")
    _close(viewer)


def test_lambda_panel_shows_the_models_suggestion(make_napari_viewer, finished_job, tmp_path, qtbot):
    """With thresholds left unset, the panel shows the ramp the hook resolved from the model."""
    replay = JobReplay(finished_job, tmp_path / "job")
    replay.copy_iteration(replay.iterations[0])
    (replay.target / "credgui.toml").write_text('denoiser = "none"\n')  # thresholds unset
    replay.copy_iteration(replay.iterations[1])
    record = {"iteration": replay.iterations[1], "half": 2, "lambda": 0.25, "nominal_resolution": 9.0,
              "lambda_low_res": 11.5, "lambda_high_res": 5.5, "lambda_max": 1.0, "status": "ok"}
    with (replay.target / "credgui_hook.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")  # the last call logged
    viewer, widgets = _open(make_napari_viewer, qtbot, replay.target)
    panel = widgets["Lambda"]
    wait_until(qtbot, lambda: panel.auto.isChecked() and panel.low.value() == 11.5, timeout_s=30)
    assert panel.high.value() == 5.5 and not panel.low.isEnabled()
    assert "11.5 / 5.5" in panel.auto.text()
    x, y = panel.curve.getData()
    res = 1.0 / x
    assert np.allclose(y[res > 11.5], 0.0) and np.allclose(y[res < 5.5], 1.0)
    _close(viewer)


def test_bad_job_directories_are_reported_in_the_panel(make_napari_viewer, tmp_path, qtbot):
    viewer, widgets = _open(make_napari_viewer, qtbot)
    monitor = widgets["Monitor and maps"]
    session = monitor.session
    assert not session.open_job(tmp_path / "does_not_exist")
    assert monitor.banner.isVisibleTo(monitor) and "no such directory" in monitor.banner.text()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    assert not session.open_job(junk)
    assert "not a RELION refinement job directory" in monitor.banner.text()
    a_file = tmp_path / "file.mrc"
    a_file.write_bytes(b"\0" * 10)
    assert not session.open_job(a_file)
    assert "not a directory" in monitor.banner.text()
    _close(viewer)


def test_half_written_map_then_complete(make_napari_viewer, finished_job, tmp_path, qtbot):
    """An iteration whose map is still being written is not shown (the previous one stays, no
    error dialog); once the file is whole the new iteration appears."""
    replay = JobReplay(finished_job, tmp_path / "job")
    its = replay.iterations
    for n in its[:2]:
        replay.copy_iteration(n)
    n = its[1]
    half1 = replay.target / f"run_it{n:03d}_half1_class001.mrc"
    good = half1.read_bytes()
    half1.write_bytes(good[: len(good) // 3])  # RELION's own maps are not written atomically
    viewer, widgets = _open(make_napari_viewer, qtbot, replay.target)
    monitor = widgets["Monitor and maps"]
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == its[0], timeout_s=60)
    qtbot.wait(1500)  # a few watcher polls: the half-written iteration must not be taken
    assert monitor.last_load["iteration"] == its[0]
    half1.write_bytes(good)
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == n, timeout_s=30)
    assert "half1_reg" in monitor.layers.kinds
    _close(viewer)


def test_unreadable_map_is_reported_in_one_line(make_napari_viewer, finished_job, tmp_path, qtbot):
    """A map that cannot be read (here a ground truth that is not MRC) is named in the panel;
    the other maps are still shown."""
    from credgui._qt.session import JobContext

    replay = JobReplay(finished_job, tmp_path / "job")
    replay.copy_iteration(replay.iterations[0])
    bad = tmp_path / "ground_truth.mrc"
    bad.write_bytes(b"this is not an MRC file" * 100)
    viewer, widgets = _open(make_napari_viewer, qtbot, replay.target)
    monitor = widgets["Monitor and maps"]
    wait_until(qtbot, lambda: monitor.last_load.get("iteration") == replay.iterations[0], timeout_s=60)
    session = monitor.session
    session.set_context(JobContext(session.job_dir, ground_truth=bad))
    wait_until(qtbot, lambda: "ground truth:" in monitor.banner.text(), timeout_s=30)
    text = monitor.banner.text()
    assert str(bad) in text and "\n" not in text.strip() and "Traceback" not in text
    assert {"half1_reg", "half2_reg"} <= set(monitor.layers.kinds)
    _close(viewer)


def test_relion_crash_is_shown_in_the_panel(make_napari_viewer, finished_job, tmp_path, qtbot):
    replay = JobReplay(finished_job, tmp_path / "job")
    replay.copy_iteration(replay.iterations[0])
    message = "ERROR: there was something wrong with system call"
    (replay.target / "run.err").write_text(
        "in: /build/relion/src/ml_optimiser.cpp, line 3620\n" + message + "\n"
    )
    viewer, widgets = _open(make_napari_viewer, qtbot, replay.target)
    monitor = widgets["Monitor and maps"]
    wait_until(qtbot, lambda: monitor.session.state is not None, timeout_s=30)
    wait_until(qtbot, lambda: "something wrong" in monitor.banner.text(), timeout_s=10)
    assert monitor.banner.isVisibleTo(monitor)
    assert monitor.fields["status"].text() == "failed"
    # a failed hook call (credgui_hook.jsonl) is shown too
    record = {"time": "2026-01-01T00:00:00", "root": f"run_it{replay.iterations[0]:03d}_half1_class001",
              "iteration": replay.iterations[0], "half": 1, "status": "error",
              "error": "denoiser unet: CUDA out of memory", "timings": {}}
    with (replay.target / "credgui_hook.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    wait_until(qtbot, lambda: "CUDA out of memory" in monitor.banner.text(), timeout_s=10)
    img = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(img, tmp_path / "credgui_relion_error.png")
    _close(viewer)


def test_launch_panel_fills_in_and_shows_the_command(make_napari_viewer, relion_project, tiny_dataset, qtbot):
    """Choosing particles.star reads the optics pixel size and finds the files beside it; the
    exact command line is shown before running; incomplete input is refused in the panel."""
    import shlex

    from credgui.jobs.launch import local_command

    viewer, widgets = _open(make_napari_viewer, qtbot)
    launch = widgets["Launch"]
    launch.run_btn.click()  # nothing chosen yet
    assert "choose the particles STAR" in launch.banner.text()
    launch.particles.set_path(relion_project / "particles.star")
    launch.particles.edit.editingFinished.emit()
    qtbot.waitUntil(lambda: launch.pixel.value() > 0 and launch.job_dir.text() != "", timeout=20000)
    assert launch.pixel.value() == pytest.approx(tiny_dataset.pixel_size)
    assert launch.initial.path() == relion_project / "initial_model.mrc"
    assert launch.mask.path() == relion_project / "mask.mrc"
    assert Path(launch.job_dir.text()) == relion_project / "Refine3D" / "job001"
    assert not (relion_project / "Refine3D" / "job001").exists()  # only made when run
    launch.diameter.setValue(float(tiny_dataset.particle_diameter_angst))
    launch.symmetry.setText("C1")
    launch.iter_max.setValue(2)
    launch.update_preview()
    expected = shlex.join(str(a) for a in local_command(launch.params()))
    qtbot.waitUntil(lambda: launch.preview.toPlainText() == expected, timeout=20000)
    assert "--auto_iter_max 2" in expected and "--particle_diameter" in expected
    # a ramp the hook would refuse is refused here, in one line
    launch.low.setValue(4.0)
    launch.high.setValue(8.0)
    launch.run_btn.click()
    assert "lambda_high_res" in launch.banner.text() and "\n" not in launch.banner.text()
    _close(viewer)
