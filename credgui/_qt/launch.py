"""Launch panel: set up a CW-RED refinement, see its exact command line, run it locally or submit
it to a queue, stop, continue, or open (adopt) an existing job directory.

Everything is done by ``credgui.jobs.launch`` (command lines, job directories, starting and
stopping); this panel only collects the values into a ``RefineParams`` and calls it. Anything that
touches the disk or starts processes runs in a ``thread_worker``; errors are shown in the panel.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from napari.qt.threading import thread_worker
from qtpy.QtCore import QTimer
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from credgui._qt.monitor import ErrorBanner
from credgui._qt.session import JobContext, _quiet, session_for
from credgui.config import HookConfig


def optics_pixel_size(star: Path) -> float:
    """Pixel size (A) from a particles STAR's optics table (RELION 3.1); runs in a worker."""
    from credgui.relion.jobdir import read_optics

    pixel_size, _box = read_optics(star)
    return float(pixel_size)


def jobs_function(name: str):
    """``name`` (stop_job, continue_job, adopt_job, ...) from the job-control core."""
    import importlib

    for module in ("credgui.jobs.launch", "credgui.jobs.control", "credgui.jobs.watch", "credgui.jobs"):
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    raise RuntimeError(f"credgui.jobs has no {name} (job control not installed)")


def _denoisers() -> list[str]:
    try:
        from credgui.denoise.registry import available_denoisers

        names = sorted(available_denoisers())
    except Exception:  # noqa: BLE001 (a broken plugin folder must not break the panel)
        names = []
    return ["none"] + [n for n in names if n != "none"]


class PathField(QWidget):
    """A line edit with a Browse button (file or directory)."""

    def __init__(self, caption: str, filter_: str = "", directory: bool = False, placeholder: str = "") -> None:
        super().__init__()
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit(placeholderText=placeholder)
        button = QPushButton("…")
        button.setFixedWidth(28)
        button.clicked.connect(self._browse)
        lay.addWidget(self.edit, 1)
        lay.addWidget(button)
        self.caption, self.filter, self.directory = caption, filter_, directory

    def _browse(self) -> None:
        if self.directory:
            path = QFileDialog.getExistingDirectory(self, self.caption, self.edit.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, self.caption, self.edit.text(), self.filter)
        if path:
            self.edit.setText(path)
            self.edit.editingFinished.emit()

    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: Path | str | None) -> None:
        self.edit.setText("" if path is None else str(path))


class LaunchWidget(QWidget):
    """Dock widget: a RELION Refine3D run with credgui's hook (CW-RED)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.session.attach(self)
        self.handle: Any = None
        self._tag = 0
        self._callbacks: dict[int, Any] = {}
        self._preview_for: Any = None
        self._build()
        self._preview_timer = QTimer(self, singleShot=True, interval=150)
        self._preview_timer.timeout.connect(self.update_preview)
        self.session.job_changed.connect(self._on_job)

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.banner = ErrorBanner()
        root.addWidget(self.banner)
        inputs = QGroupBox("Data")
        form = QFormLayout(inputs)
        self.project = PathField("Project directory (RELION's working directory)", directory=True,
                                 placeholder="folder holding Refine3D/")
        self.particles = PathField("Particles STAR", "STAR (*.star)", placeholder="particles.star")
        self.initial = PathField("Initial model", "MRC (*.mrc *.map)", placeholder="initial_model.mrc")
        self.truth = PathField("Ground-truth map (optional)", "MRC (*.mrc *.map)", placeholder="optional")
        self.mask = PathField("Solvent mask (optional)", "MRC (*.mrc *.map)", placeholder="optional")
        form.addRow("Project:", self.project)
        form.addRow("Particles STAR:", self.particles)
        form.addRow("Initial model:", self.initial)
        form.addRow("Ground truth:", self.truth)
        form.addRow("Mask:", self.mask)
        root.addWidget(inputs)

        opts = QGroupBox("Refinement")
        form = QFormLayout(opts)
        self.pixel = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=50.0, singleStep=0.1)
        self.pixel.setSuffix(" Å")
        self.pixel.setSpecialValueText("from the STAR's optics table")
        self.diameter = QDoubleSpinBox(decimals=1, minimum=1.0, maximum=5000.0, value=200.0)
        self.diameter.setSuffix(" Å")
        self.symmetry = QLineEdit("C1")
        self.mpi = QSpinBox(minimum=3, maximum=512, value=3)
        self.mpi.setToolTip("RELION's 3D auto-refine needs at least 3 MPI processes (master + 2 halves)")
        self.threads = QSpinBox(minimum=1, maximum=256, value=1)
        self.denoiser = QComboBox()
        self.denoiser.addItems(_denoisers())
        self.denoiser.setCurrentText(HookConfig.denoiser)  # the shipped model by default
        self.low = QDoubleSpinBox(decimals=2, minimum=0.5, maximum=100.0, value=10.0)
        self.low.setSuffix(" Å")
        self.high = QDoubleSpinBox(decimals=2, minimum=0.5, maximum=100.0, value=4.5)
        self.high.setSuffix(" Å")
        self.lam_max = QDoubleSpinBox(decimals=3, minimum=0.0, maximum=1.0, singleStep=0.05, value=1.0)
        self.iter_max = QSpinBox(minimum=0, maximum=999, value=0)
        self.iter_max.setSpecialValueText("until RELION converges")
        self.extra = QLineEdit(placeholderText="more relion_refine arguments (optional)")
        self.job_dir = QLineEdit(placeholderText="Refine3D/jobNNN/ (next free one)")
        form.addRow("Pixel size:", self.pixel)
        form.addRow("Particle diameter:", self.diameter)
        form.addRow("Symmetry:", self.symmetry)
        form.addRow("MPI processes:", self.mpi)
        form.addRow("Threads per process:", self.threads)
        form.addRow("Denoiser:", self.denoiser)
        form.addRow("lambda = 0 worse than:", self.low)
        form.addRow("lambda = max better than:", self.high)
        form.addRow("lambda_max:", self.lam_max)
        form.addRow("Max iterations:", self.iter_max)
        form.addRow("Extra arguments:", self.extra)
        form.addRow("Job directory:", self.job_dir)
        root.addWidget(opts)

        root.addWidget(QLabel("Command line:"))
        self.preview = QPlainTextEdit(readOnly=True)
        font = QFont("monospace")
        font.setStyleHint(QFont.TypeWriter)
        self.preview.setFont(font)
        self.preview.setMaximumHeight(110)
        root.addWidget(self.preview)

        queue = QGroupBox("Queue")
        form = QFormLayout(queue)
        self.template = PathField("Submission script template", "scripts (*.sh *.slurm *.tmpl *)",
                                  placeholder="a RELION queue template (XXXcommandXXX ...)")
        self.queue_name = QLineEdit(placeholderText="partition / queue name")
        from credgui.jobs.launch import default_template

        self.template.set_path(default_template())
        form.addRow("Template:", self.template)
        form.addRow("Queue:", self.queue_name)
        root.addWidget(queue)

        row1 = QHBoxLayout()
        self.run_btn = QPushButton("Run (local)")
        self.submit_btn = QPushButton("Submit (queue)")
        row1.addWidget(self.run_btn)
        row1.addWidget(self.submit_btn)
        row2 = QHBoxLayout()
        self.stop_btn = QPushButton("Stop")
        self.continue_btn = QPushButton("Continue")
        self.open_btn = QPushButton("Adopt / open job…")
        row2.addWidget(self.stop_btn)
        row2.addWidget(self.continue_btn)
        row2.addWidget(self.open_btn)
        root.addLayout(row1)
        root.addLayout(row2)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

        self.run_btn.clicked.connect(self.run_local)
        self.submit_btn.clicked.connect(self.submit)
        self.stop_btn.clicked.connect(self.stop)
        self.continue_btn.clicked.connect(self.continue_)
        self.open_btn.clicked.connect(self._browse_job)
        self.particles.edit.editingFinished.connect(self._on_particles)
        self.project.edit.editingFinished.connect(self._suggest_job_dir)
        for w in (self.project.edit, self.particles.edit, self.initial.edit, self.truth.edit, self.mask.edit,
                  self.symmetry, self.job_dir, self.template.edit, self.queue_name, self.extra):
            w.textChanged.connect(lambda *_: self._preview_timer.start())
        for w in (self.pixel, self.diameter, self.mpi, self.threads, self.low, self.high, self.lam_max,
                  self.iter_max):
            w.valueChanged.connect(lambda *_: self._preview_timer.start())
        self.denoiser.currentIndexChanged.connect(lambda *_: self._preview_timer.start())

    # -- worker helper -------------------------------------------------------------------------
    def _run(self, fn, on_done, *args) -> None:
        """Run ``fn(*args)`` in a worker; ``on_done(result)`` gets its value or a ``_Failure``.

        The worker returns ``(tag, result)`` to a bound slot, so nothing is called on a panel
        that was closed meanwhile."""
        self._tag += 1
        tag = self._tag
        self._callbacks[tag] = on_done

        def work():
            try:
                return tag, fn(*args)
            except Exception as exc:  # noqa: BLE001 (shown in the banner)
                text = str(exc).strip().splitlines()
                return tag, _Failure(text[0] if text else type(exc).__name__)

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(self._on_returned)
        _quiet(worker)
        worker.start()

    def _on_returned(self, tagged: tuple[int, Any]) -> None:
        tag, result = tagged
        callback = self._callbacks.pop(tag, None)
        if callback is not None:
            callback(result)

    # -- inputs --------------------------------------------------------------------------------
    def _on_particles(self) -> None:
        star = self.particles.path()
        if star is None:
            return
        folder = star.parent
        for field, name in ((self.initial, "initial_model.mrc"), (self.truth, "ground_truth.mrc"),
                            (self.mask, "mask.mrc")):
            if field.path() is None and (folder / name).is_file():
                field.set_path(folder / name)
        if self.project.path() is None:
            self.project.set_path(folder)
            self._suggest_job_dir()
        self._run(optics_pixel_size, self._on_pixel, star)

    def _on_pixel(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self.banner.show_error(result.message)
            return
        self.banner.show_error(None)
        self.pixel.setValue(result)
        self.status.setText(f"pixel size {result:g} Å from the optics table")

    def _suggest_job_dir(self) -> None:
        project = self.project.path()
        if project is None:
            return

        def suggest(p):
            from credgui.jobs.launch import next_job_dir

            return next_job_dir(p, "Refine3D", create=False)

        self._run(suggest, self._on_job_dir, project)

    def _on_job_dir(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self.banner.show_error(result.message)
        else:
            self.job_dir.setText(str(result))

    def hook_config(self) -> HookConfig:
        return HookConfig(
            denoiser=self.denoiser.currentText(),
            lambda_low_res=self.low.value(),
            lambda_high_res=self.high.value(),
            lambda_max=self.lam_max.value(),
            pixel_size=self.pixel.value() or None,
        )

    def params(self) -> Any:
        """The RefineParams the panel describes (raises InputError/ValueError when incomplete)."""
        from credgui.errors import InputError
        from credgui.jobs.launch import RefineParams

        missing = [name for name, f in (("particles STAR", self.particles), ("initial model", self.initial))
                   if f.path() is None]
        if missing:
            raise InputError(None, f"choose the {' and the '.join(missing)}")
        if not self.job_dir.text().strip():
            raise InputError(None, "choose a project directory (the job directory is made in its Refine3D/)")
        config = self.hook_config().validate("launch panel")
        return RefineParams(
            particles_star=self.particles.path(),
            initial_model=self.initial.path(),
            job_dir=Path(self.job_dir.text().strip()).expanduser(),
            pixel_size=self.pixel.value() or None,
            particle_diameter=self.diameter.value(),
            symmetry=self.symmetry.text().strip() or "C1",
            mpi_procs=self.mpi.value(),
            threads=self.threads.value(),
            ground_truth=self.truth.path(),
            mask=self.mask.path(),
            auto_iter_max=self.iter_max.value() or None,
            extra_args=tuple(shlex.split(self.extra.text())),
            hook_config=config,
        )

    def update_preview(self) -> None:
        """Show the exact command line (built in a worker: the first call asks ``mpirun
        --version`` which MPI it is)."""
        try:
            params = self.params()
        except Exception as exc:  # noqa: BLE001 (incomplete input is normal while typing)
            self.preview.setPlainText(f"(incomplete: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            return

        def build(p):
            from credgui.jobs.launch import local_command

            return shlex.join(str(a) for a in local_command(p))

        self._preview_for = params
        self._run(build, lambda text, p=params: self._on_preview(p, text), params)

    def _on_preview(self, params: Any, result: Any) -> None:
        if params != self._preview_for:  # typed on meanwhile
            return
        text = result.message if isinstance(result, _Failure) else result
        self.preview.setPlainText(text if not isinstance(result, _Failure) else f"(incomplete: {text})")

    def _context(self, params: Any) -> JobContext:
        star = Path(params.particles_star)
        poses = star.parent / "true_poses.star"
        return JobContext(
            job_dir=Path(params.job_dir).resolve(),
            particles_star=star,
            ground_truth=params.ground_truth,
            mask=params.mask,
            true_poses=poses if poses.is_file() else None,
            pixel_size=params.pixel_size,
        )

    # -- actions -------------------------------------------------------------------------------
    def run_local(self) -> None:
        self._launch("local")

    def submit(self) -> None:
        self._launch("queue")

    def _launch(self, how: str) -> None:
        try:
            params = self.params()
        except Exception as exc:  # noqa: BLE001
            self.banner.show_error(str(exc).splitlines()[0])
            return
        template, queue = self.template.path(), self.queue_name.text().strip()
        if how == "queue" and template is None:
            self.banner.show_error("choose a submission script template to submit to a queue")
            return
        self.banner.show_error(None)
        self.status.setText(f"starting {params.job_dir} ({how})…")
        self.run_btn.setEnabled(False)
        self.submit_btn.setEnabled(False)

        def start(p):
            from credgui.jobs import launch

            if how == "local":
                return launch.launch_local(p)
            return launch.submit_queue(p, template=template, queue=queue or None)

        self._run(start, lambda result: self._on_launched(result, params), params)

    def _on_launched(self, result: Any, params: Any) -> None:
        self.run_btn.setEnabled(True)
        self.submit_btn.setEnabled(True)
        if isinstance(result, _Failure):
            self.banner.show_error(result.message)
            self.status.setText("not started")
            return
        self.handle = result
        job_id = getattr(result, "job_id", None)
        self.status.setText(f"started {params.job_dir}" + (f" (job id {job_id})" if job_id else ""))
        self.session.open_job(params.job_dir, context=self._context(params))

    def stop(self) -> None:
        job_dir = self.session.job_dir
        if job_dir is None:
            self.banner.show_error("no job is open")
            return

        def do(d):
            return jobs_function("stop_job")(d)

        self.status.setText(f"stopping {job_dir}…")
        self._run(do, lambda r: self._done(r, f"stop requested for {job_dir}"), job_dir)

    def continue_(self) -> None:
        job_dir = self.session.job_dir
        if job_dir is None:
            self.banner.show_error("no job is open")
            return

        def do(d):
            return jobs_function("continue_job")(d)

        self.status.setText(f"continuing {job_dir}…")
        self._run(do, lambda r: self._done(r, f"continued {job_dir}"), job_dir)

    def _done(self, result: Any, text: str) -> None:
        if isinstance(result, _Failure):
            self.banner.show_error(result.message)
        else:
            if result is not None and hasattr(result, "job_dir"):
                self.handle = result
            self.banner.show_error(None)
            self.status.setText(text)

    def _browse_job(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Adopt / open a RELION Refine3D job directory")
        if path:
            self.open_job(path)

    def open_job(self, path: str | Path) -> None:
        """Adopt a job (running or finished) and show it in the monitor."""
        path = Path(path)

        def adopt(p):
            return jobs_function("adopt_job")(p)

        def done(result):
            if isinstance(result, _Failure):  # not adoptable: still show what is on disk
                self.status.setText(f"opened read-only ({result.message})")
            else:
                self.handle = result
                self.status.setText(f"adopted {path}")
            self.session.open_job(path)

        self._run(adopt, done, path)

    def _on_job(self, job_dir: Path | None) -> None:
        if job_dir is not None and not self.job_dir.text():
            self.job_dir.setText(str(job_dir))


class _Failure:
    """An error from a worker, as one line."""

    def __init__(self, message: str) -> None:
        self.message = message
