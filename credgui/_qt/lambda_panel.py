"""Lambda panel: the CW-RED confidence ramp (paper section 4.3) of a job, editable while it runs.

Spin boxes for ``lambda_low_res``, ``lambda_high_res`` (A) and ``lambda_max``; the ramp is drawn
against resolution with the hook's latest nominal resolution marked. Apply writes the job's
``credgui.toml`` with ``credgui.config.write_config`` (atomic, in a worker); the hook re-reads
it at its next call, and its ``credgui_hook.jsonl`` shows the values it used (shown below the
plot).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from napari.qt.threading import thread_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from credgui._qt import _state
from credgui._qt.monitor import ErrorBanner
from credgui._qt.plots import ResolutionAxis
from credgui._qt.session import _quiet, session_for
from credgui.config import CONFIG_NAME, HookConfig

DEFAULT_LOW, DEFAULT_HIGH = 10.0, 4.5  # paper section 4.3; HookConfig's fallback when unset


def ramp(resolution: np.ndarray, low: float, high: float, lam_max: float) -> np.ndarray:
    """lambda at each nominal resolution (A), from the core's schedule when it has one."""
    try:
        from credgui.recon import schedule
    except ImportError:
        schedule = None
    fn = getattr(schedule, "lambda_for_resolution", None) if schedule is not None else None
    if fn is not None:
        return np.array([fn(float(r), low, high, lam_max) for r in resolution])
    # HookConfig's documented rule: 0 worse than low, lam_max better than high, linear in A between
    t = np.clip((low - np.asarray(resolution, float)) / (low - high), 0.0, 1.0)
    return lam_max * t


def _read_config(job_dir: Path) -> HookConfig:
    from credgui.config import parse_config

    path = job_dir / CONFIG_NAME
    return parse_config(path) if path.exists() else HookConfig()


def _write_config(job_dir: Path, values: dict[str, Any]) -> tuple[Path, HookConfig]:
    """Read-modify-write the job's credgui.toml (keeps the other keys); runs in a worker."""
    from credgui.config import write_config

    path = job_dir / CONFIG_NAME
    config = dataclasses.replace(_read_config(job_dir), **values)
    write_config(path, config)
    return path, config


class LambdaWidget(QWidget):
    """Dock widget: edit the lambda ramp of the open job; see what the hook last used."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.session.attach(self)
        self._worker = None
        self.last_written: float | None = None
        self._build()
        self.session.job_changed.connect(self._on_job)
        self.session.state_changed.connect(self._on_state)
        if self.session.job_dir is not None:
            self._on_job(self.session.job_dir)
        if self.session.state is not None:
            self._on_state(self.session.state)

    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.banner = ErrorBanner()
        root.addWidget(self.banner)
        form = QFormLayout()
        self.low = QDoubleSpinBox(decimals=2, minimum=0.5, maximum=100.0, singleStep=0.5, value=DEFAULT_LOW)
        self.low.setSuffix(" Å")
        self.high = QDoubleSpinBox(decimals=2, minimum=0.5, maximum=100.0, singleStep=0.5, value=DEFAULT_HIGH)
        self.high.setSuffix(" Å")
        self.lam_max = QDoubleSpinBox(decimals=3, minimum=0.0, maximum=1.0, singleStep=0.05, value=1.0)
        self.auto = QCheckBox("use the denoiser's suggestion (leave unset)")
        self.auto.toggled.connect(self._on_auto)
        low_row = QHBoxLayout()
        low_row.addWidget(self.low)
        form.addRow("lambda = 0 worse than (lambda_low_res):", low_row)
        form.addRow("lambda = max better than (lambda_high_res):", self.high)
        form.addRow("lambda_max:", self.lam_max)
        form.addRow(self.auto)
        root.addLayout(form)
        for spin in (self.low, self.high, self.lam_max):
            spin.valueChanged.connect(self._redraw)
        self.plot = pg.PlotWidget(axisItems={"bottom": ResolutionAxis("bottom")}, title="CW-RED ramp")
        self.plot.setBackground("w")
        self.plot.setLabel("bottom", "nominal resolution (Å)")
        self.plot.setLabel("left", "lambda")
        self.plot.setYRange(-0.02, 1.05)
        self.plot.setMinimumHeight(180)
        self.curve = self.plot.plot(pen=pg.mkPen("#1f77b4", width=2))
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen("#d62728", width=2),
                                      label="", labelOpts={"position": 0.85, "color": "#d62728"})
        self.marker.hide()
        self.plot.addItem(self.marker, ignoreBounds=True)
        root.addWidget(self.plot, 1)
        row = QHBoxLayout()
        self.apply_btn = QPushButton("Apply to job (credgui.toml)")
        self.apply_btn.clicked.connect(self.apply)
        self.apply_btn.setEnabled(False)
        row.addWidget(self.apply_btn)
        root.addLayout(row)
        self.status = QLabel("open a job to edit its lambda ramp")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        self.used = QLabel("")
        self.used.setWordWrap(True)
        root.addWidget(self.used)
        self._redraw()

    # -- values --------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        if self.auto.isChecked():
            return {"lambda_low_res": None, "lambda_high_res": None, "lambda_max": self.lam_max.value()}
        return {"lambda_low_res": self.low.value(), "lambda_high_res": self.high.value(),
                "lambda_max": self.lam_max.value()}

    def set_values(self, config: HookConfig) -> None:
        for spin, value in ((self.low, config.lambda_low_res), (self.high, config.lambda_high_res)):
            spin.blockSignals(True)
            spin.setValue(value if value is not None else (DEFAULT_LOW if spin is self.low else DEFAULT_HIGH))
            spin.blockSignals(False)
        self.lam_max.setValue(config.lambda_max)
        self.auto.setChecked(config.lambda_low_res is None and config.lambda_high_res is None)
        self._redraw()

    def _on_auto(self, checked: bool) -> None:
        self.low.setEnabled(not checked)
        self.high.setEnabled(not checked)
        self._redraw()

    def _redraw(self) -> None:
        low, high = self.low.value(), self.high.value()
        if high >= low:
            self.banner.show_error(f"lambda_high_res ({high} Å) must be finer (smaller) than lambda_low_res ({low} Å)")
            self.apply_btn.setEnabled(False)
            return
        self.banner.show_error(None)
        self.apply_btn.setEnabled(self.session.job_dir is not None)
        res = np.linspace(max(low * 2.0, 20.0), max(high * 0.5, 1.0), 400)
        self.curve.setData(1.0 / res, ramp(res, low, high, self.lam_max.value()))

    # -- job -----------------------------------------------------------------------------------
    def _on_job(self, job_dir: Path | None) -> None:
        self.apply_btn.setEnabled(job_dir is not None)
        if job_dir is None:
            return
        try:
            self.set_values(_read_config(job_dir))
            self.status.setText(f"{job_dir / CONFIG_NAME}: loaded")
        except Exception as exc:  # noqa: BLE001 (bad TOML is shown, not raised)
            self.banner.show_error(str(exc))

    def _show_suggestion(self, record: dict[str, Any]) -> None:
        """With "use the denoiser's suggestion" ticked, show the ramp the hook resolved (the
        model's thresholds from its confidence curve, logged per call) in the greyed spin boxes."""
        low, high = record.get("lambda_low_res"), record.get("lambda_high_res")
        if not self.auto.isChecked() or low is None or high is None:
            return
        if (self.low.value(), self.high.value()) == (float(low), float(high)):
            return
        for spin, value in ((self.low, low), (self.high, high)):
            spin.blockSignals(True)
            spin.setValue(float(value))
            spin.blockSignals(False)
        self.auto.setText(f"use the denoiser's suggestion (leave unset): {float(low):g} / {float(high):g} Å")
        self._redraw()

    def _on_state(self, state: Any) -> None:
        its = _state.state_iterations(state)
        records = [r for it in its for r in _state.hook_records(it)]
        if not records:
            self.used.setText("the hook has not logged a call yet (credgui_hook.jsonl)")
            self.marker.hide()
            return
        last = records[-1]
        self._show_suggestion(last)
        nom = last.get("nominal_resolution")
        if nom:
            self.marker.setValue(1.0 / float(nom))
            self.marker.label.setFormat(f"nominal {float(nom):.2f} Å")
            self.marker.show()
        self.used.setText(used_text(last))
        self.used.setToolTip(
            "lambda follows the worse (coarser) of two numbers: the 0.143 crossing of the half-map FSC "
            "RELION handed to the hook, and RELION's own current resolution (its latest model STAR). "
            "Iteration 1 and the final joined map always get lambda 0."
        )

    def apply(self) -> None:
        job_dir = self.session.job_dir
        if job_dir is None:
            self.banner.show_error("open or launch a job first")
            return
        values = self.values()

        def work():
            try:
                return _write_config(job_dir, values)
            except Exception as exc:  # noqa: BLE001 (shown in the banner)
                return str(exc).splitlines()[0]

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(self._on_written)
        _quiet(worker)
        self._worker = worker
        self.apply_btn.setEnabled(False)
        worker.start()

    def _on_written(self, result: Any) -> None:
        self.apply_btn.setEnabled(True)
        if isinstance(result, str):
            self.banner.show_error(result)
            return
        path, config = result
        self.last_written = time.time()
        self.banner.show_error(None)
        self.status.setText(
            f"wrote {path} at {time.strftime('%H:%M:%S')}: lambda_low_res {_fmt(config.lambda_low_res)}, "
            f"lambda_high_res {_fmt(config.lambda_high_res)}, lambda_max {_fmt(config.lambda_max)}; "
            "the hook uses it from its next call"
        )


def _fmt(value: Any, none: str = "auto") -> str:
    if value is None:
        return none
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def used_text(rec: dict) -> str:
    """One line on the hook's last call: lambda, the resolution that drove it and the two
    numbers it came from, each labelled (the hook log's fields)."""

    def num(key: str) -> str:
        return _fmt(rec.get(key), none="-")

    half = rec.get("half")
    where = f"iteration {rec.get('iteration')} " + (f"half {half}" if half is not None else "final joined map")
    source = rec.get("resolution_source")
    why = {
        "first iteration": "lambda 0 at iteration 1 (no gold-standard FSC yet)",
        "final map": "lambda 0 on the final joined map (kept prior-free for validation)",
        "unknown": "no resolution known: lambda 0",
    }.get(source, f"driven by nominal {num('nominal_resolution')} Å ({source or 'fsc'})")
    return (
        f"hook, {where}: lambda {num('lambda')}, {why}; FSC handed over 0.143 at {num('fsc_resolution')} Å, "
        f"RELION's current resolution {num('relion_resolution')} Å; ramp {num('lambda_low_res')} → "
        f"{num('lambda_high_res')} Å, lambda_max {num('lambda_max')}"
    )
