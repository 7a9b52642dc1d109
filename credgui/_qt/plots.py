"""Plots panel (pyqtgraph): half-map FSC per iteration, FSC vs ground truth, resolution, lambda
and angular error per iteration; export of every plot (PNG, SVG) and a per-iteration CSV.

The curves come from the session's ``JobState`` and the maps panel's ``MapsSummary``; resolution
crossings are computed by ``credgui.metrics.fsc.resolution_at`` (vs the truth: by
``credgui.metrics.truth``) and angular errors by ``credgui.metrics.angles.angular_errors`` (in a
worker: it reads RELION's ``run_itNNN_data.star``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from napari.qt.threading import thread_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from credgui._qt import _state
from credgui._qt._state import MAP_LABELS
from credgui._qt.session import _quiet, session_for

THRESHOLDS = (0.143, 0.5)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


class ResolutionAxis(pg.AxisItem):
    """Spatial frequency axis (values in 1/A) whose tick labels read as resolution in A."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.enableAutoSIPrefix(False)

    def tickStrings(self, values, scale, spacing):
        return ["∞" if v <= 0 else f"{1.0 / v:.3g}" for v in values]


def _fsc_plot(title: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(axisItems={"bottom": ResolutionAxis("bottom")}, title=title)
    plot.setBackground("w")
    plot.setLabel("bottom", "resolution (Å), axis linear in spatial frequency")
    plot.setLabel("left", "FSC")
    plot.setYRange(-0.05, 1.02)
    plot.showGrid(x=True, y=True, alpha=0.2)
    for thr in THRESHOLDS:
        plot.addItem(pg.InfiniteLine(pos=thr, angle=0, pen=pg.mkPen("#888", style=Qt.DashLine)), ignoreBounds=True)
    plot.addLegend(offset=(-10, 10))
    return plot


def _iteration_plot(title: str, ylabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(title=title)
    plot.setBackground("w")
    plot.setLabel("bottom", "iteration")
    plot.setLabel("left", ylabel)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.addLegend(offset=(-10, 10))
    return plot


def crossings(curve: _state.FscCurve) -> dict[float, float]:
    """Resolution (A) where a half-map FSC falls below each threshold (core resolution_at)."""
    from credgui.metrics.fsc import resolution_at

    if curve.box_angstrom is None or curve.shells_fsc.size < 2:
        return {}
    return {t: resolution_at(curve.shells_fsc, t, curve.box_angstrom, 1) for t in THRESHOLDS}


def _fmt_res(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f} Å"


def angular_error_stats(data_star: Path, true_poses: Path) -> tuple[float, float, int]:
    """(median, mean) angular error in degrees and the particle count: the core's
    ``credgui.metrics.angles`` (particles matched by image index and stack name, so a job made
    by ``credgui demo``, whose image names say ``data/particles.mrcs``, matches its truth)."""
    from credgui.metrics.angles import angle_summary, angular_errors

    s = angle_summary(angular_errors(data_star, true_poses))
    return s["median_deg"], s["mean_deg"], s["n"]


def _render_svg(widget: QWidget, path: Path) -> None:
    """Paint ``widget`` into an SVG file with Qt's own SVG generator (vector output)."""
    from qtpy.QtGui import QPainter
    from qtpy.QtSvg import QSvgGenerator

    generator = QSvgGenerator()
    generator.setFileName(str(path))
    generator.setSize(widget.size())
    generator.setViewBox(widget.rect())
    generator.setTitle(path.stem)
    painter = QPainter(generator)
    try:
        widget.render(painter)
    finally:
        painter.end()


class PlotsWidget(QWidget):
    """Dock widget with the plots; ``export(folder)`` writes PNG + SVG of each and a CSV."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.session.attach(self)
        self._angle_cache: dict[int, tuple[float, float, int] | str] = {}
        self._angle_worker = None
        self.half_curves: list[pg.PlotDataItem] = []
        self.truth_curves: list[pg.PlotDataItem] = []
        self._build()
        self.session.state_changed.connect(self.update_state)
        self.session.maps_loaded.connect(self.update_truth)
        self.session.job_changed.connect(lambda _d: self._angle_cache.clear())
        self.session.context_changed.connect(self._on_context)
        if self.session.state is not None:
            self.update_state(self.session.state)

    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.tabs = QTabWidget()
        self.plots: dict[str, pg.PlotWidget] = {
            "fsc_halves": _fsc_plot("Half-map FSC per iteration (latest bold)"),
            "fsc_truth": _fsc_plot("FSC vs ground truth (soft solvent mask)"),
            "resolution": _iteration_plot("Resolution", "resolution (Å)"),
            "lambda": _iteration_plot("Lambda (hook)", "lambda"),
            "angles": _iteration_plot("Angular error vs true poses", "angular error (°)"),
        }
        self.captions: dict[str, QLabel] = {}
        for key, title in (
            ("fsc_halves", "FSC"),
            ("fsc_truth", "FSC vs truth"),
            ("resolution", "Resolution"),
            ("lambda", "Lambda"),
            ("angles", "Angles"),
        ):
            page = QWidget()
            lay = QVBoxLayout(page)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.addWidget(self.plots[key], 1)
            caption = QLabel("")
            caption.setWordWrap(True)
            lay.addWidget(caption)
            self.captions[key] = caption
            self.tabs.addTab(page, title)
        self.tabs.setMinimumHeight(260)
        root.addWidget(self.tabs, 1)
        row = QHBoxLayout()
        for text, slot in (("Export plots (PNG+SVG)…", self._export_plots), ("Export CSV…", self._export_csv)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            row.addWidget(b)
        root.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

    # -- updates -------------------------------------------------------------------------------
    def update_state(self, state: Any) -> None:
        its = list(_state.state_iterations(state))
        self._draw_half_fsc(its)
        self._draw_per_iteration(its)
        self._request_angles(its)

    def _draw_half_fsc(self, its: list[Any]) -> None:
        plot = self.plots["fsc_halves"]
        for item in self.half_curves:
            plot.removeItem(item)
        self.half_curves = []
        curves = [(it, _state.iteration_fsc(it)) for it in its]
        curves = [(it, c) for it, c in curves if c is not None and c.frequency.size]
        n = len(curves)
        for k, (it, c) in enumerate(curves):
            latest = k == n - 1
            alpha = 255 if latest else int(40 + 120 * (k + 1) / max(n, 1))
            pen = pg.mkPen((31, 119, 180, alpha) if latest else (120, 120, 120, alpha), width=3 if latest else 1)
            name = f"iteration {_state.iteration_number(it)}" if latest else None
            item = plot.plot(c.frequency, c.fsc, pen=pen, name=name)
            self.half_curves.append(item)
        if curves:
            it, c = curves[-1]
            cr = crossings(c)
            self.captions["fsc_halves"].setText(
                f"iteration {_state.iteration_number(it)}: FSC 0.143 at {_fmt_res(cr.get(0.143))}, "
                f"0.5 at {_fmt_res(cr.get(0.5))}"
            )
        else:
            self.captions["fsc_halves"].setText("no FSC yet")

    def update_truth(self, summary: Any) -> None:
        plot = self.plots["fsc_truth"]
        for item in self.truth_curves:
            plot.removeItem(item)
        self.truth_curves = []
        lines = []
        for k, tf in enumerate(summary.truth_fsc):
            pen = pg.mkPen(PALETTE[k % len(PALETTE)], width=2)
            item = plot.plot(tf.frequency, tf.fsc, pen=pen, name=MAP_LABELS[tf.kind])
            self.truth_curves.append(item)
            lines.append(f"{MAP_LABELS[tf.kind]}: 0.5 at {_fmt_res(tf.res_05)}, 0.143 at {_fmt_res(tf.res_0143)}")
        masked = any(tf.masked for tf in summary.truth_fsc)
        head = f"iteration {summary.iteration}" + (" (masked)" if masked else "")
        self.captions["fsc_truth"].setText(
            head + ": " + "; ".join(lines) if lines else "no ground truth known for this job"
        )

    def _draw_per_iteration(self, its: list[Any]) -> None:
        numbers = np.array([_state.iteration_number(it) for it in its], dtype=float)
        res = np.array([_state.iteration_resolution(it) or np.nan for it in its], dtype=float)
        lam = np.array([np.nan if (v := _state.mean_lambda(it)) is None else v for it in its], dtype=float)
        nominal = np.array([np.nan if (v := _state.nominal_resolution(it)) is None else v for it in its])
        p = self.plots["resolution"]
        p.clear()
        ok = np.isfinite(res)
        p.plot(numbers[ok], res[ok], pen=pg.mkPen(PALETTE[0], width=2), symbol="o", symbolSize=6,
               symbolBrush=PALETTE[0], name="RELION resolution")
        okn = np.isfinite(nominal)
        if okn.any():
            p.plot(numbers[okn], nominal[okn], pen=pg.mkPen(PALETTE[1], width=1, style=Qt.DashLine), symbol="t",
                   symbolSize=6, symbolBrush=PALETTE[1], name="hook nominal resolution")
        self.captions["resolution"].setText(
            f"latest: {_fmt_res(res[ok][-1])}" if ok.any() else "no iteration yet"
        )
        p = self.plots["lambda"]
        p.clear()
        okl = np.isfinite(lam)
        p.plot(numbers[okl], lam[okl], pen=pg.mkPen(PALETTE[2], width=2), symbol="o", symbolSize=6,
               symbolBrush=PALETTE[2], name="lambda (mean of halves)")
        p.setYRange(0, 1.05)
        self.captions["lambda"].setText(
            f"latest lambda {lam[okl][-1]:.3f}" if okl.any() else "no hook calls logged (credgui_hook.jsonl)"
        )
        self._numbers, self._res, self._lam = numbers, res, lam

    def _on_context(self, _ctx: Any) -> None:
        if self.session.state is not None:
            self._request_angles(list(_state.state_iterations(self.session.state)))

    # -- angular error (worker) ------------------------------------------------------------------
    def _request_angles(self, its: list[Any]) -> None:
        ctx = self.session.context
        job_dir = self.session.job_dir
        if ctx is None or ctx.true_poses is None or job_dir is None:
            self.captions["angles"].setText("no true poses (true_poses.star beside particles.star)")
            return
        todo = []
        for it in its:
            n = _state.iteration_number(it)
            star = Path(getattr(it, "data_star", None) or job_dir / f"run_it{n:03d}_data.star")
            if n not in self._angle_cache and star.is_file() and n > 0:
                todo.append((n, star))
        if not todo or self._angle_worker is not None:
            self._draw_angles()
            return
        truth = ctx.true_poses

        def work():
            for n, star in todo:
                try:
                    yield n, angular_error_stats(star, truth)
                except Exception as exc:  # noqa: BLE001 (shown in the caption)
                    yield n, f"{star.name}: {exc}".splitlines()[0]

        worker = thread_worker(work, start_thread=False)()
        worker.yielded.connect(self._on_angle)
        worker.finished.connect(self._on_angles_done)
        _quiet(worker)
        self._angle_worker = worker
        worker.start()

    def _on_angle(self, item: tuple) -> None:
        n, value = item
        self._angle_cache[n] = value
        self._draw_angles()

    def _on_angles_done(self) -> None:
        self._angle_worker = None
        if self.session.state is not None:
            self._request_angles(list(_state.state_iterations(self.session.state)))

    def _draw_angles(self) -> None:
        p = self.plots["angles"]
        p.clear()
        good = sorted((n, v) for n, v in self._angle_cache.items() if isinstance(v, tuple))
        bad = [v for v in self._angle_cache.values() if isinstance(v, str)]
        if good:
            n = np.array([g[0] for g in good], float)
            med = np.array([g[1][0] for g in good])
            mean = np.array([g[1][1] for g in good])
            p.plot(n, med, pen=pg.mkPen(PALETTE[3], width=2), symbol="o", symbolSize=6,
                   symbolBrush=PALETTE[3], name="median")
            p.plot(n, mean, pen=pg.mkPen(PALETTE[4], width=1, style=Qt.DashLine), name="mean")
            self.captions["angles"].setText(
                f"iteration {int(n[-1])}: median {med[-1]:.2f}°, mean {mean[-1]:.2f}° over {good[-1][1][2]} particles"
                + (f"; {bad[-1]}" if bad else "")
            )
        elif bad:
            self.captions["angles"].setText(bad[-1])

    # -- export --------------------------------------------------------------------------------
    def _export_plots(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the plots")
        if folder:
            written = self.export_plots(folder)
            self.status.setText(f"wrote {len(written)} files to {folder}")

    def _export_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Per-iteration CSV", "credgui_iterations.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)
            self.status.setText(f"wrote {path}")

    def export_plots(self, folder: str | Path) -> list[Path]:
        """PNG and SVG of every plot into ``folder``; returns the files written."""
        from pyqtgraph.exporters import ImageExporter, SVGExporter

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for key, plot in self.plots.items():
            item = plot.getPlotItem()
            png = folder / f"credgui_{key}.png"
            exporter = ImageExporter(item)
            exporter.parameters()["width"] = max(800, int(plot.width()))
            exporter.export(str(png))
            svg = folder / f"credgui_{key}.svg"
            try:
                SVGExporter(item).export(str(svg))
            except ValueError:  # pyqtgraph 0.14's SVG exporter cannot parse Qt 6's path data
                _render_svg(plot, svg)
            written += [png, svg]
        return written

    def export_csv(self, path: str | Path) -> Path:
        """One row per iteration: resolution, lambda and hook timings (s) per half."""
        path = Path(path)
        state = self.session.state
        its = list(_state.state_iterations(state)) if state is not None else []
        durations = _state.iteration_durations(its)
        stages = ["read", "unreg", "denoise", "update", "gridding", "write", "total"]
        header = ["iteration", "resolution_A", "angular_sampling_deg", "iteration_time_s",
                  "nominal_resolution_A", "lambda_mean", "angular_error_median_deg"]
        for half in (1, 2):
            header += [f"half{half}_lambda"] + [f"half{half}_{s}_s" for s in stages]
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for it, dur in zip(its, durations):
                n = _state.iteration_number(it)
                ang = self._angle_cache.get(n)
                row = [n, _state.iteration_resolution(it), _state.iteration_sampling(it), dur,
                       _state.nominal_resolution(it), _state.mean_lambda(it),
                       ang[0] if isinstance(ang, tuple) else None]
                recs = {r.get("half"): r for r in _state.hook_records(it)}
                for half in (1, 2):
                    r = recs.get(half, {})
                    t = r.get("timings") or {}
                    row += [r.get("lambda")] + [t.get(s) for s in stages]
                w.writerow(["" if v is None else v for v in row])
        return path
