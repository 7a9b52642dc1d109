"""Open napari with credgui's four dock widgets, optionally on a job directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WIDGETS = (
    # (npe2 display name, module:class, dock area, tabify)
    ("Launch", "credgui._qt.launch:LaunchWidget", "left", False),
    ("Lambda", "credgui._qt.lambda_panel:LambdaWidget", "left", True),
    ("Monitor and maps", "credgui._qt.monitor:MonitorWidget", "right", False),
    ("Plots", "credgui._qt.plots:PlotsWidget", "right", False),
)


def add_widgets(viewer: Any) -> dict[str, Any]:
    """Dock credgui's widgets in ``viewer``; returns {display name: widget}."""
    import importlib

    widgets: dict[str, Any] = {}
    docks = {}
    for name, target, area, tabify in WIDGETS:
        module, cls = target.split(":")
        widget = getattr(importlib.import_module(module), cls)(viewer)
        docks[name] = viewer.window.add_dock_widget(widget, name=name, area=area, tabify=tabify)
        widgets[name] = widget
    docks["Launch"].raise_()
    return widgets


def open_viewer(job_dir: str | Path | None = None, *, show: bool = True, viewer: Any = None) -> tuple[Any, dict]:
    """A napari viewer with credgui's widgets; opens ``job_dir`` for inspection when given."""
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="credgui", show=show)
    widgets = add_widgets(viewer)
    if job_dir is not None:  # for inspection: read only (the Launch panel's button adopts)
        widgets["Monitor and maps"].session.open_job(job_dir)
    return viewer, widgets


def run(job_dir: str | Path | None = None) -> int:
    """Open the window and run napari's event loop until it is closed."""
    import napari

    open_viewer(job_dir)
    napari.run()
    return 0
