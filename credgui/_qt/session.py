"""The job a napari window is looking at, shared by credgui's dock widgets of that window.

``session_for(viewer)`` returns one ``JobSession`` per viewer: the launch panel opens a job in it,
the monitor, maps, plots and lambda panels listen to its signals. Watching the job directory runs
in a ``thread_worker`` generator that calls ``credgui.jobs.watch.scan_job`` every ``poll_s`` and
yields a ``JobState`` when something changed; the slot (GUI thread) only stores it and emits.
Errors never escape the worker as exceptions (napari would show a traceback): they are yielded
as ``WatchError`` and shown as one line in the panels.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, Signal

from credgui._qt import _state
from credgui.errors import InputError


@dataclass(frozen=True)
class WatchError:
    """Scanning the job directory failed; ``message`` is one line for the panel."""

    job_dir: Path
    message: str


@dataclass(frozen=True)
class JobContext:
    """What the GUI knows about a job beyond RELION's files: where the truth is, if anywhere."""

    job_dir: Path
    particles_star: Path | None = None
    ground_truth: Path | None = None
    mask: Path | None = None
    true_poses: Path | None = None
    pixel_size: float | None = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" if not isinstance(exc, InputError) else str(exc)


def check_job_dir(job_dir: Path) -> str | None:
    """A one-line reason why ``job_dir`` cannot be a RELION job directory, or None."""
    if not job_dir.exists():
        return f"{job_dir}: no such directory"
    if not job_dir.is_dir():
        return f"{job_dir}: not a directory"
    from credgui.relion.jobdir import is_relion_job_dir

    if not is_relion_job_dir(job_dir):
        return (
            f"{job_dir}: not a RELION refinement job directory (no credgui_job.json, run.out or "
            "*_optimiser.star); choose a Refine3D/jobNNN folder"
        )
    return None


def watch_job_dir(job_dir: Path, poll_s: float = 0.5) -> Iterator[Any]:
    """Yield a JobState whenever the job directory changes, WatchError on failure, else None.

    Yields at least every 0.1 s so that ``worker.quit()`` takes effect promptly.
    """
    last_key: Any = object()
    last_error: str | None = None
    while True:
        try:
            from credgui.jobs.watch import scan_job

            state = scan_job(job_dir)
        except Exception as exc:  # noqa: BLE001 (shown in the panel, the watcher keeps going)
            message = _one_line(exc)
            if message != last_error:
                last_error = message
                last_key = object()
                yield WatchError(job_dir, message)
        else:
            last_error = None
            key = _state.state_key(state)
            if key != last_key:
                last_key = key
                yield state
        deadline = time.monotonic() + poll_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.1, left))
            yield None


def _tag_items(tag: int, generator: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """Yield ``(tag, item)``: which watcher an item comes from."""
    for item in generator:
        yield (tag, item)


def find_context(job_dir: Path, state: Any = None) -> JobContext:
    """Locate particles.star (from RELION's optimiser STAR) and the simulated truth beside it.

    Runs in a worker (reads small STAR files). Simulated data sets keep ``ground_truth.mrc``,
    ``mask.mrc`` and ``true_poses.star`` beside ``particles.star`` (docs/DEVELOPING.md).
    """
    particles = gt = mask = None
    pixel_size = None
    record = None
    try:
        from credgui.jobs.jobfile import read_job_file

        record = read_job_file(job_dir)
    except Exception:  # noqa: BLE001 (no or unreadable credgui_job.json: RELION's files decide)
        record = None
    if record:
        params = record.params or {}
        particles = Path(params["particles_star"]) if params.get("particles_star") else None
        gt = Path(record.ground_truth) if record.ground_truth else None
        mask = Path(record.mask) if record.mask else None
        pixel_size = params.get("pixel_size")
    if state is not None:
        gt = gt or getattr(state, "ground_truth", None)
        mask = mask or getattr(state, "mask", None)
    if particles is None:
        particles = _particles_from_optimiser(job_dir)
    poses = None
    if particles is not None and particles.is_file():
        folder = particles.parent
        # a simulated data set keeps its truth beside particles.star (docs/DEVELOPING.md)
        gt = gt or folder / "ground_truth.mrc"
        mask = mask or folder / "mask.mrc"
        poses = folder / "true_poses.star"
    return JobContext(
        job_dir=job_dir,
        particles_star=particles,
        ground_truth=gt if gt is not None and gt.is_file() else None,
        mask=mask if mask is not None and mask.is_file() else None,
        true_poses=poses if poses is not None and poses.is_file() else None,
        pixel_size=pixel_size,
    )


def _particles_from_optimiser(job_dir: Path) -> Path | None:
    """The ``--i`` of relion_refine, from the command line RELION writes atop its optimiser STAR."""
    import shlex

    from credgui.relion.jobdir import read_optimiser_star

    stars = sorted(job_dir.glob("run*_it*_optimiser.star"))
    if not stars:
        return None
    try:
        args = shlex.split(read_optimiser_star(stars[0]).command_line)
    except Exception:  # noqa: BLE001 (no particles known: no truth shown)
        return None
    value = next((args[k + 1] for k, a in enumerate(args[:-1]) if a == "--i"), None)
    if not value:
        return None
    path = Path(value)
    if path.is_absolute():
        return path
    # RELION writes paths relative to its working directory, the project (job_dir/../..)
    for base in (job_dir.parent.parent, job_dir, job_dir.parent):
        if (base / path).is_file():
            return (base / path).resolve()
    return None


def _quiet(worker: Any) -> None:
    """Stop napari from turning a worker's exception into a traceback notification."""
    try:
        worker.errored.disconnect()
    except (TypeError, RuntimeError):
        pass


class JobSession(QObject):
    """The job shown in one napari window; its signals drive all credgui panels."""

    job_changed = Signal(object)  # Path | None
    context_changed = Signal(object)  # JobContext
    state_changed = Signal(object)  # JobState
    iteration_changed = Signal(object)  # Iteration | None (the one selected for maps)
    message = Signal(str, str)  # level ("info" | "error"), one line
    maps_loaded = Signal(object)  # credgui._qt.maps.MapsSummary (FSC vs truth for the plots)

    def __init__(self, parent: QObject | None = None, poll_s: float = 0.5) -> None:
        super().__init__(parent)
        self.poll_s = poll_s
        self.job_dir: Path | None = None
        self.state: Any = None
        self.context: JobContext | None = None
        self.follow_latest = True
        self.selected: int | None = None  # iteration number
        self._worker = None
        self._context_worker = None
        self._context_tried_at = -1
        self._attached = 0
        self._watch_id = 0

    # -- opening ---------------------------------------------------------------------------
    def open_job(self, job_dir: str | Path, context: JobContext | None = None) -> bool:
        job_dir = Path(job_dir).expanduser().resolve()
        problem = check_job_dir(job_dir)
        self.stop_watching()
        if problem:
            self.message.emit("error", problem)
            return False
        self.job_dir = job_dir
        self.state = None
        self.selected = None
        self.follow_latest = True
        self.context = context or JobContext(job_dir)
        self._context_tried_at = -1
        self.job_changed.emit(job_dir)
        self.context_changed.emit(self.context)
        self.message.emit("info", f"watching {job_dir}")
        self._watch_id += 1
        worker = thread_worker(_tag_items, start_thread=False)(self._watch_id, watch_job_dir(job_dir, self.poll_s))
        worker.yielded.connect(self._on_yield)
        _quiet(worker)  # never a traceback dialog; watch_job_dir does not raise
        self._worker = worker
        worker.start()
        if context is None:
            self._find_context()
        return True

    def set_context(self, context: JobContext) -> None:
        self.context = context
        self.context_changed.emit(context)

    def _find_context(self) -> None:
        job_dir = self.job_dir

        def work():
            try:
                return find_context(job_dir, self.state)
            except Exception as exc:  # noqa: BLE001 (a context is optional)
                return WatchError(job_dir, _one_line(exc))

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(self._on_context)
        _quiet(worker)
        self._context_worker = worker
        worker.start()

    def _on_context(self, result: Any) -> None:
        if isinstance(result, JobContext) and result.job_dir == self.job_dir:
            old = self.context or JobContext(result.job_dir)
            merged = JobContext(
                job_dir=result.job_dir,
                particles_star=old.particles_star or result.particles_star,
                ground_truth=old.ground_truth or result.ground_truth,
                mask=old.mask or result.mask,
                true_poses=old.true_poses or result.true_poses,
                pixel_size=old.pixel_size or result.pixel_size,
            )
            self.set_context(merged)

    def attach(self, widget: QObject) -> None:
        """Count ``widget`` as a user of this session: the watcher stops when the last one is
        destroyed (the window closed or the docks removed)."""
        self._attached += 1
        widget.destroyed.connect(self._detach)

    def _detach(self, *_args: Any) -> None:
        self._attached -= 1
        if self._attached <= 0:
            self.stop_watching()

    def stop_watching(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._worker = None

    # -- updates (GUI thread) --------------------------------------------------------------
    def _on_yield(self, tagged: tuple[int, Any]) -> None:
        watch_id, item = tagged
        if item is None or self._worker is None or watch_id != self._watch_id:
            return  # nothing new, or from the watcher of a job no longer shown
        if isinstance(item, WatchError):
            if item.job_dir == self.job_dir:
                self.message.emit("error", item.message)
            return
        if self.job_dir is None:
            return
        need_context = self.context is None or self.context.particles_star is None
        self.state = item
        self.state_changed.emit(item)
        its = _state.state_iterations(item)
        if its and need_context and len(its) != self._context_tried_at:
            self._context_tried_at = len(its)
            self._find_context()
        if self.follow_latest:
            self._emit_selected()

    def select_iteration(self, number: int | None) -> None:
        """Show iteration ``number``; None follows the latest as the run goes."""
        self.follow_latest = number is None
        self.selected = number
        self._emit_selected()

    def selected_iteration(self) -> Any:
        its = _state.state_iterations(self.state) if self.state is not None else ()
        if not its:
            return None
        if self.follow_latest or self.selected is None:
            return its[-1]
        for it in its:
            if _state.iteration_number(it) == self.selected:
                return it
        return its[-1]

    def _emit_selected(self) -> None:
        self.iteration_changed.emit(self.selected_iteration())


_SESSIONS: weakref.WeakKeyDictionary[Any, JobSession] = weakref.WeakKeyDictionary()
_SESSIONS_BY_ID: dict[int, JobSession] = {}


def session_for(viewer: Any) -> JobSession:
    """The one JobSession of ``viewer`` (created on first use; widgets ``attach`` to it)."""
    try:
        session = _SESSIONS.get(viewer)
    except TypeError:  # not weak-referenceable
        session = _SESSIONS_BY_ID.get(id(viewer))
    if session is None:
        session = JobSession()
        try:
            _SESSIONS[viewer] = session
        except TypeError:
            _SESSIONS_BY_ID[id(viewer)] = session
    return session
