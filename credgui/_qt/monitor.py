"""Monitor and maps panel: job status, RELION's log tail, errors, and the maps of one iteration.

The status comes from the session's ``JobState`` (``credgui.jobs.watch``). Maps are loaded by
``credgui._qt.maps.load_maps`` in a ``thread_worker``; a newer request supersedes an older one
(latest wins), and layers are updated in the slot on the GUI thread.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from napari.qt.threading import thread_worker
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from credgui._qt import _state
from credgui._qt.maps import (
    MODES,
    PLANES,
    LoadedMap,
    MapLayers,
    MapRequest,
    MapsSummary,
    load_maps,
    surface,
)
from credgui._qt.session import JobContext, _quiet, session_for
from credgui.progress import format_duration

ERROR_STYLE = "QLabel { background: #8b1a1a; color: white; padding: 6px; border-radius: 3px; }"
INFO_STYLE = "QLabel { color: palette(text); padding: 2px; }"


class ErrorBanner(QLabel):
    """A red one-or-few-line message at the top of a panel (never a dialog)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setStyleSheet(ERROR_STYLE)
        self.hide()

    def show_error(self, text: str | None) -> None:
        if text:
            self.setText(text)
            self.setToolTip(text)  # the whole message, should the dock be too narrow for it
            self.show()
        else:
            self.clear()
            self.hide()


class MonitorWidget(QWidget):
    """Dock widget: status of the job, log tail, errors, and the maps panel."""

    maps_shown = Signal(object)  # MapsSummary, after the layers were updated

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.session.attach(self)
        self.layers = MapLayers(napari_viewer)
        self._load_worker = None
        self._pending: MapRequest | None = None
        self._shown_key: tuple | None = None
        self._volumes: dict[str, Any] = {}
        self.last_load: dict[str, float] = {}
        self.exported: list[Path] = []
        self._build()
        s = self.session
        s.job_changed.connect(self._on_job)
        s.state_changed.connect(self._on_state)
        s.iteration_changed.connect(self._on_iteration)
        s.context_changed.connect(self._on_context)
        s.message.connect(self._on_message)
        self._queue: deque = deque()
        self._load_id = 0
        self._last_shape: tuple[int, ...] | None = None
        self._expected_by_job: dict[Path | None, set[str]] = {}
        self.destroyed.connect(self._stop_workers)
        self._drain_timer = QTimer(self, singleShot=True, interval=5)
        self._drain_timer.timeout.connect(self._drain)
        self._level_timer = QTimer(self, singleShot=True, interval=300)
        self._level_timer.timeout.connect(self._remesh)
        if s.job_dir is not None:
            self._on_job(s.job_dir)
            if s.state is not None:
                self._on_state(s.state)

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        row = QHBoxLayout()
        self.job_edit = QLineEdit(placeholderText="Refine3D/jobNNN (running or finished)")
        self.job_edit.returnPressed.connect(lambda: self.session.open_job(self.job_edit.text()))
        browse = QPushButton("Open job…")
        browse.clicked.connect(self._browse_job)
        row.addWidget(self.job_edit, 1)
        row.addWidget(browse)
        root.addLayout(row)
        self.banner = ErrorBanner()
        root.addWidget(self.banner)

        box = QGroupBox("Run")
        form = QFormLayout(box)
        self.fields: dict[str, QLabel] = {}
        for key, label in (
            ("status", "Status"),
            ("backend", "Runs on"),
            ("iteration", "Iteration"),
            ("resolution", "Resolution"),
            ("sampling", "Angular sampling"),
            ("per_iter", "Time per iteration"),
            ("elapsed", "Elapsed"),
            ("remaining", "Estimated remaining"),
            ("lambda", "Lambda (last hook call)"),
        ):
            value = QLabel("-")
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            form.addRow(label + ":", value)
            self.fields[key] = value
        root.addWidget(box)

        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(400)
        font = QFont("monospace")
        font.setStyleHint(QFont.TypeWriter)
        self.log.setFont(font)
        self.log.setPlaceholderText("RELION's log (run.out / run.err) appears here")
        self.log.setMinimumHeight(90)
        self.log.setMaximumHeight(180)
        root.addWidget(QLabel("RELION log (tail):"))
        root.addWidget(self.log)

        maps = QGroupBox("Maps")
        grid = QFormLayout(maps)
        it_row = QHBoxLayout()
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._on_slider)
        self.follow = QCheckBox("latest", checked=True)
        self.follow.toggled.connect(self._on_follow)
        self.it_label = QLabel("-")
        it_row.addWidget(self.slider, 1)
        it_row.addWidget(self.it_label)
        it_row.addWidget(self.follow)
        grid.addRow("Iteration:", it_row)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["central slices", "isosurfaces (marching cubes)", "volume (iso rendering)"])
        self.mode_combo.currentIndexChanged.connect(lambda i: self.layers.set_mode(MODES[i]))
        grid.addRow("Display:", self.mode_combo)
        self.plane_combo = QComboBox()
        self.plane_combo.addItems(list(PLANES))
        self.plane_combo.currentTextChanged.connect(self.layers.set_plane)
        grid.addRow("Slice plane:", self.plane_combo)
        self.level_spin = QDoubleSpinBox(decimals=2, minimum=-10.0, maximum=50.0, singleStep=0.1)
        self.level_spin.setSuffix(" σ")
        self.level_spin.setToolTip("Shared contour level, in standard deviations of each map")
        self.level_spin.valueChanged.connect(lambda _v: self._level_timer.start())
        self._level_auto = True
        grid.addRow("Isosurface level:", self.level_spin)
        gt_row = QHBoxLayout()
        self.gt_label = QLabel("none")
        self.gt_label.setWordWrap(True)
        gt_btn = QPushButton("Ground truth…")
        gt_btn.clicked.connect(self._browse_truth)
        gt_row.addWidget(self.gt_label, 1)
        gt_row.addWidget(gt_btn)
        grid.addRow("Truth:", gt_row)
        self.grid_label = QLabel("")
        self.grid_label.setWordWrap(True)
        self.grid_label.setToolTip("The maps in napari's grid, left to right, top to bottom")
        grid.addRow("Grid:", self.grid_label)
        self.load_label = QLabel("")
        self.load_label.setWordWrap(True)
        grid.addRow(self.load_label)
        save = QPushButton("Export view and slices (PNG, SVG)…")
        save.clicked.connect(self._export_dialog)
        grid.addRow(save)
        root.addWidget(maps)
        root.addStretch(1)

    # -- session signals -------------------------------------------------------------------
    def _on_job(self, job_dir: Path | None) -> None:
        self.job_edit.setText(str(job_dir or ""))
        self.banner.show_error(None)
        self.log.clear()
        self._shown_key = None
        for f in self.fields.values():
            f.setText("-")

    def _on_context(self, ctx: JobContext) -> None:
        self.gt_label.setText(ctx.ground_truth.name if ctx.ground_truth else "none")
        self.gt_label.setToolTip(str(ctx.ground_truth or ""))
        self._shown_key = None
        if self.session.state is not None:
            self._on_iteration(self.session.selected_iteration())

    def _on_message(self, level: str, text: str) -> None:
        if level == "error":
            self.banner.show_error(text)

    def _on_state(self, state: Any) -> None:
        its = _state.state_iterations(state)
        status = _state.state_status(state)
        self.fields["status"].setText(status)
        backend, job_id = getattr(state, "backend", None), getattr(state, "job_id", None)
        queue = getattr(state, "queue_state", None)
        self.fields["backend"].setText(
            " ".join(x for x in (backend or "-", f"job {job_id}" if job_id else "", f"({queue})" if queue else "") if x)
        )
        errors = []
        main_error = _state.state_error(state)
        if main_error:
            errors.append(main_error)
        if its:  # the hook's failures, unless the job's error already quotes them
            for line in _state.hook_errors(its[-1]):
                if not main_error or line.split(": ", 1)[-1] not in main_error:
                    errors.append(line)
        self.banner.show_error("\n".join(errors) if errors else None)
        if its:
            last = its[-1]
            self.fields["iteration"].setText(str(_state.iteration_number(last)))
            res = _state.iteration_resolution(last)
            self.fields["resolution"].setText(f"{res:.2f} Å" if res and math.isfinite(res) else "-")
            samp = _state.iteration_sampling(last)
            self.fields["sampling"].setText(f"{samp:.2f}°" if samp else "-")
            durations = [d for d in _state.iteration_durations(its) if d]
            self.fields["per_iter"].setText(format_duration(durations[-1]) if durations else "-")
            lam = _state.mean_lambda(last)
            recs = _state.hook_records(last)
            self.fields["lambda"].setText("-" if lam is None else f"{lam:.3f}, " + driving_text(recs[-1] if recs else {}))
            self.fields["lambda"].setToolTip(
                "lambda follows the worse (coarser) of the 0.143 crossing of the FSC RELION hands the hook and "
                "RELION's own current resolution; 0 at iteration 1 and on the final joined map"
            )
        self.fields["elapsed"].setText(format_duration(_state.state_elapsed(state)))
        self.fields["remaining"].setText(
            format_duration(_state.state_remaining(state)) if status == "running" else "-"
        )
        tail = _state.state_log_tail(state)
        if tail != self.log.toPlainText():
            self.log.setPlainText(tail)
            self.log.verticalScrollBar().setValue(self.log.verticalScrollBar().maximum())
        numbers = [_state.iteration_number(it) for it in its]
        self.slider.blockSignals(True)
        self.slider.setEnabled(bool(numbers))
        if numbers:
            self.slider.setRange(numbers[0], numbers[-1])
            if self.session.follow_latest:
                self.slider.setValue(numbers[-1])
        self.slider.blockSignals(False)

    def _on_slider(self, value: int) -> None:
        self.follow.blockSignals(True)
        self.follow.setChecked(False)
        self.follow.blockSignals(False)
        self.session.select_iteration(value)

    def _on_follow(self, checked: bool) -> None:
        if checked:
            self.session.select_iteration(None)
        else:
            self.session.select_iteration(self.slider.value())

    def _on_iteration(self, it: Any) -> None:
        if it is None:
            return
        number = _state.iteration_number(it)
        self.it_label.setText(str(number))
        paths = _state.iteration_maps(it)
        ctx = self.session.context
        if ctx is not None and ctx.ground_truth is not None:
            paths["ground_truth"] = ctx.ground_truth
        if not paths:
            self.load_label.setText(f"iteration {number}: no maps on disk yet")
            return
        expected = set(paths)
        if not getattr(it, "final", False):
            job_dir = self.session.job_dir
            if job_dir not in self._expected_by_job:  # read credgui.toml once per job, not per iteration
                self._expected_by_job[job_dir] = _state.expected_kinds(job_dir)
            expected |= self._expected_by_job[job_dir]
        self.layers.expected = expected
        key = (number, tuple(sorted((k, str(p), _mtime(p)) for k, p in paths.items())))
        if key == self._shown_key:
            return
        self._shown_key = key
        level = None if self._level_auto else self.level_spin.value()
        self._start_load(
            MapRequest(number, paths, level=level, mask=ctx.mask if ctx else None,
                       pixel_size=getattr(it, "pixel_size", None) or (ctx.pixel_size if ctx else None))
        )

    # -- loading (worker) ------------------------------------------------------------------
    def _start_load(self, request: MapRequest) -> None:
        if self._load_worker is not None:
            self._load_worker.quit()
        self.load_label.setText(f"loading iteration {request.iteration}…")
        self._load_id += 1
        worker = thread_worker(_tagged, start_thread=False)(self._load_id, load_maps(request))
        worker.yielded.connect(self._on_loaded)  # a bound slot: disconnected if the panel goes
        _quiet(worker)
        self._load_worker = worker
        self._pending = request
        worker.start()

    def _on_loaded(self, tagged: tuple[int, Any]) -> None:
        """Queue a worker's result; results are applied one per event-loop turn (``_drain``) so
        the canvas repaints and input is handled between layer updates."""
        load_id, item = tagged
        if item is None or load_id != self._load_id:
            return
        if isinstance(item, LoadedMap):  # image and surface in two turns
            self._queue.append((load_id, ("image", item)))
            self._queue.append((load_id, ("surface", item)))
            self._last_shape = item.volume.shape
        elif isinstance(item, MapsSummary) and self._last_shape is not None:
            for kind in self.layers.missing_layers():  # one layer pair per turn, before the summary
                self._queue.append((load_id, ("placeholder", (kind, self._last_shape))))
            self._queue.append((load_id, item))
        else:
            self._queue.append((load_id, item))
        if not self._drain_timer.isActive():
            self._drain_timer.start()

    def _drain(self) -> None:
        while self._queue:
            load_id, item = self._queue.popleft()
            if load_id == self._load_id:
                self._apply(item)
                break
        if self._queue:
            self._drain_timer.start()

    def _apply(self, item: Any) -> None:
        if isinstance(item, tuple):
            part, loaded = item
            if part == "placeholder":
                self.layers.apply_placeholder(*loaded)
            elif part == "image":
                self._volumes[loaded.kind] = loaded.volume
                self.layers.apply_image(loaded)
            else:
                self.layers.apply_surface(loaded)
        elif isinstance(item, MapsSummary):
            self._apply_summary(item)

    def _apply_summary(self, summary: MapsSummary) -> None:
        for kind in list(self._volumes):
            if kind not in summary.kinds:
                self._volumes.pop(kind)
        self.layers.apply_summary(summary)
        if self._level_auto:
            self.level_spin.blockSignals(True)
            self.level_spin.setValue(summary.level)
            self.level_spin.blockSignals(False)
        now = time.monotonic()
        self.last_load = {
            "iteration": summary.iteration,
            "requested_at": summary.requested_at,
            "shown_at": now,
            "shown_wall": time.time(),
            "load_s": now - summary.requested_at,
        }
        text = f"iteration {summary.iteration}: {len(summary.kinds)} maps shown ({now - summary.requested_at:.2f} s)"
        self.load_label.setText(text)
        self.grid_label.setText(" | ".join(self.layers.grid_order()))
        if summary.errors:
            self.banner.show_error("\n".join(summary.errors))
        self.maps_shown.emit(summary)
        self.session.maps_loaded.emit(summary)

    def _remesh(self) -> None:
        """Recompute the isosurfaces of the shown maps at the new shared level (worker)."""
        self._level_auto = False
        level = self.level_spin.value()
        self.layers.level = level
        for layer in self.layers.image_layers():
            layer.iso_threshold = level
        volumes = dict(self._volumes)
        if not volumes:
            return

        def work():
            for kind, volume in volumes.items():
                verts, faces = surface(volume, level)
                yield (kind, verts, faces)

        worker = thread_worker(work, start_thread=False)()
        worker.yielded.connect(self._on_remeshed)
        _quiet(worker)
        self._remesh_worker = worker
        worker.start()

    def _stop_workers(self, *_args: Any) -> None:
        for worker in (self._load_worker, getattr(self, "_remesh_worker", None)):
            if worker is not None:
                worker.quit()

    def _on_remeshed(self, item: tuple) -> None:
        kind, verts, faces = item
        layer = self.layers._layer(self.layers.surface_name(kind))
        if layer is not None and len(faces):
            layer.data = (verts, faces)

    # -- actions -----------------------------------------------------------------------------
    def _browse_job(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a RELION Refine3D job directory")
        if path:
            self.session.open_job(path)

    def _browse_truth(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Ground-truth map", "", "MRC maps (*.mrc *.map)")
        if path:
            ctx = self.session.context or JobContext(self.session.job_dir or Path("."))
            self.session.set_context(
                JobContext(ctx.job_dir, ctx.particles_star, Path(path), ctx.mask, ctx.true_poses, ctx.pixel_size)
            )

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the view and the slices")
        if folder:
            self.export_slices(folder)

    def export_slices(self, folder: str | Path) -> None:
        """The canvas as shown (PNG, now) and the current slices, one PNG each plus a labelled
        SVG figure (written in a worker); ``self.exported`` lists the files when done."""
        from credgui._qt.maps import current_slices, write_slices

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.exported = []
        view = self.save_view(folder / "credgui_view.png")
        slices = current_slices(self.layers) if self.layers.mode == "slices" else []
        contrast = self.layers.contrast

        def work():
            try:
                return [view] + write_slices(slices, contrast, folder)
            except Exception as exc:  # noqa: BLE001 (shown in the banner)
                return str(exc).splitlines()[0]

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(self._on_exported)
        _quiet(worker)
        self._export_worker = worker
        worker.start()

    def _on_exported(self, result: Any) -> None:
        if isinstance(result, str):
            self.banner.show_error(f"export failed: {result}")
            return
        self.exported = result
        self.load_label.setText(f"exported {len(result)} files to {result[0].parent}")

    def save_view(self, path: str | Path) -> Path:
        """Screenshot of the canvas (the grid of maps as shown) to a PNG."""
        path = Path(path)
        self.viewer.screenshot(path=str(path), canvas_only=True)
        return path


def _tagged(tag: int, generator: Any) -> Any:
    """Yield ``(tag, item)`` for each item of ``generator`` (which load a result belongs to)."""
    for item in generator:
        yield (tag, item)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def driving_text(rec: dict) -> str:
    """What drove lambda at a hook call, short (the hook log's ``resolution_source`` fields)."""
    source = rec.get("resolution_source")
    if source == "first iteration":
        return "iteration 1: no gold-standard FSC yet"
    if source == "final map":
        return "final map: kept prior-free"
    nom = rec.get("nominal_resolution")
    if not nom:
        return "no resolution known"
    other = {"fsc": ("RELION", rec.get("relion_resolution")), "relion": ("FSC", rec.get("fsc_resolution"))}.get(
        source, (None, None))
    text = f"nominal {float(nom):.2f} Å ({'RELION' if source == 'relion' else 'FSC 0.143'})"
    if other[1]:
        text += f", {other[0]} {float(other[1]):.2f} Å"
    return text

