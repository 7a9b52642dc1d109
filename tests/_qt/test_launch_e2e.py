"""End to end: a real tiny RELION refinement set up and started from the launch panel, followed
by the monitor, maps and plots; a lambda change made while it runs reaches the hook's log."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pyqtgraph")
pytest.importorskip("skimage")

from tests._qt.helpers import SCREENS, save_screenshot, screenshot_stats

pytestmark = [pytest.mark.gui, pytest.mark.relion, pytest.mark.slow]

ITERATIONS = 3


def _hook_lines(job_dir: Path) -> list[dict]:
    path = job_dir / "credgui_hook.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


@pytest.mark.timeout(900)
def test_launch_panel_runs_a_local_refinement(make_napari_viewer, relion_project, tiny_dataset, tmp_path, qtbot):
    if shutil.which("relion_refine_mpi") is None or shutil.which("mpirun") is None:
        pytest.skip("RELION 3.1 not installed")
    from credgui._qt.app import open_viewer
    from credgui._qt.session import session_for
    from credgui.jobs.launch import local_command

    viewer = make_napari_viewer(show=True, title="credgui e2e")
    viewer.window._qt_window.resize(1700, 1050)
    viewer, widgets = open_viewer(None, viewer=viewer)
    launch, monitor, plots, lam = (widgets[k] for k in ("Launch", "Monitor and maps", "Plots", "Lambda"))

    # choosing particles.star fills in the optics pixel size, the files beside it, the job dir
    launch.particles.set_path(relion_project / "particles.star")
    launch.particles.edit.editingFinished.emit()
    qtbot.waitUntil(lambda: launch.pixel.value() > 0 and launch.job_dir.text() != "", timeout=20000)
    assert launch.pixel.value() == pytest.approx(tiny_dataset.pixel_size)
    assert launch.initial.path() == relion_project / "initial_model.mrc"
    assert launch.truth.path() == relion_project / "ground_truth.mrc"
    assert launch.job_dir.text().endswith("Refine3D/job001")
    launch.diameter.setValue(float(tiny_dataset.particle_diameter_angst))
    launch.iter_max.setValue(ITERATIONS)
    launch.denoiser.setCurrentText("none")
    # the exact command line is shown before running
    launch.update_preview()
    expected = shlex.join(str(a) for a in local_command(launch.params()))
    qtbot.waitUntil(lambda: launch.preview.toPlainText() == expected, timeout=20000)
    assert "relion_refine_mpi" in expected and f"--auto_iter_max {ITERATIONS}" in expected

    session = session_for(viewer)
    shown: dict[int, float] = {}  # iteration -> wall time its maps were shown
    session.maps_loaded.connect(lambda summary: shown.setdefault(summary.iteration, time.time()))
    t0 = time.monotonic()
    launch.run_btn.click()
    qtbot.waitUntil(lambda: session.job_dir is not None, timeout=30000)
    job_dir = session.job_dir
    assert job_dir == Path(launch.job_dir.text()).resolve()

    # change lambda while it runs, once the hook has been called
    qtbot.waitUntil(lambda: len(_hook_lines(job_dir)) >= 1, timeout=600000)
    lam.auto.setChecked(False)
    lam.low.setValue(25.0)
    lam.high.setValue(12.0)
    lam.lam_max.setValue(0.5)
    lam.apply_btn.click()
    qtbot.waitUntil(lambda: lam.last_written is not None, timeout=10000)
    changed_at = len(_hook_lines(job_dir))

    qtbot.waitUntil(
        lambda: monitor.fields["status"].text() in ("finished", "failed", "stopped"), timeout=800000
    )
    wall = time.monotonic() - t0
    assert monitor.fields["status"].text() == "finished", monitor.banner.text()
    qtbot.waitUntil(lambda: bool(monitor.last_load) and bool(monitor.layers.kinds), timeout=60000)
    later = _hook_lines(job_dir)[changed_at:]
    assert later, "the hook was not called after the lambda change"
    # (a call already under way when the file was written may still log the old values)
    assert later[-1].get("lambda_low_res") == 25.0 and later[-1].get("lambda_max") == 0.5, later[-1]
    qtbot.waitUntil(lambda: not monitor.load_label.text().startswith("loading"), timeout=60000)
    qtbot.wait(300)
    img = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(img, tmp_path / "credgui_e2e_finished.png")
    std, fraction = screenshot_stats(img)
    assert std > 10 and fraction > 0.05
    # latency from an iteration's last file written (RELION) to its maps shown (GUI)
    from credgui.jobs.watch import scan_job

    written = {it.number: it.time for it in scan_job(job_dir).iterations if not it.final}
    latency = {n: round(shown[n] - written[n], 2) for n in written if n in shown}
    # every iteration's maps were shown while it ran, and each has its half-map FSC curve
    assert set(written) - {0} <= set(shown), (sorted(written), sorted(shown))
    assert len(plots.half_curves) >= len(set(written) - {0}), len(plots.half_curves)
    report = {"wall_s": round(wall, 1), "job_dir": str(job_dir), "latency_s": latency}
    (SCREENS / "credgui_e2e.json").write_text(json.dumps(report))
    print("credgui e2e:", report)
    assert latency and max(latency.values()) < 15.0, report
    session.stop_watching()


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_submit_to_slurm_then_stop_from_the_panel(make_napari_viewer, slurm_cluster, tiny_dataset, tmp_path, qtbot):
    """Submit through the launch panel to a real (private) Slurm; the monitor shows the queue
    job; Stop ends it and the panel says so (no dialog)."""
    if shutil.which("relion_refine_mpi") is None:
        pytest.skip("RELION 3.1 not installed")
    from credgui._qt.app import open_viewer
    from credgui._qt.session import session_for
    from tests.fixtures.relion import make_project

    project = make_project(tmp_path / "project", tiny_dataset, n_particles=100)
    viewer = make_napari_viewer(show=True, title="credgui slurm")
    viewer, widgets = open_viewer(None, viewer=viewer)
    launch, monitor = widgets["Launch"], widgets["Monitor and maps"]
    launch.particles.set_path(project / "particles.star")
    launch.particles.edit.editingFinished.emit()
    qtbot.waitUntil(lambda: launch.pixel.value() > 0 and launch.job_dir.text() != "", timeout=20000)
    launch.diameter.setValue(float(tiny_dataset.particle_diameter_angst))
    launch.iter_max.setValue(5)
    launch.queue_name.setText(slurm_cluster.partition)
    assert launch.template.path() is not None and launch.template.path().is_file()
    launch.submit_btn.click()
    session = session_for(viewer)
    qtbot.waitUntil(lambda: session.job_dir is not None, timeout=60000)
    qtbot.waitUntil(lambda: "slurm job" in monitor.fields["backend"].text(), timeout=30000)
    qtbot.waitUntil(lambda: monitor.fields["status"].text() == "running", timeout=120000)
    launch.stop_btn.click()
    qtbot.waitUntil(lambda: monitor.fields["status"].text() in ("stopped", "failed", "finished"), timeout=120000)
    assert monitor.fields["status"].text() == "stopped", monitor.banner.text()
    # the stop also waits for the job's warm worker to exit: the panel says so when it returns
    qtbot.waitUntil(lambda: "stop requested" in launch.status.text(), timeout=60000)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), tmp_path / "credgui_slurm_stopped.png")
    session.stop_watching()
