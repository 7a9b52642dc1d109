"""napari reader and sample data (npe2 contributions in credgui/napari.yaml).

- ``.mrc`` / ``.map`` files open as Image layers scaled in Angstrom (the header's voxel size).
- A RELION job directory (``.../Refine3D/job012``: run.out, note.txt or *_optimiser.star, or
  a credgui job) opens in credgui's widgets (docked into the viewer if not yet), read only, as
  ``credgui gui JOB`` does. The reader then adds no layers itself (the monitor does).
- Sample data ``credgui: demo``: the demo data set's ground truth, initial model and mask (made
  from the bundled structure on first use, ~2 s, into ``$CREDGUI_SAMPLE_DIR`` or
  ``~/.cache/credgui/demo_data``; reused after).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any, Callable

MAP_SUFFIXES = (".mrc", ".map")
_WIDGETS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _one_path(path: Any) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(os.fspath(path))


def _is_job_dir(path: Path) -> bool:
    from credgui.relion.jobdir import JOB_FILE, is_relion_job_dir

    return path.is_dir() and ((path / JOB_FILE).is_file() or is_relion_job_dir(path))


def get_reader(path: Any) -> Callable[[Any], list] | None:
    """npe2 reader hook: a reader for one .mrc/.map file or one RELION job directory, else None."""
    p = _one_path(path)
    if p is None:
        return None
    if p.is_dir():
        return read_job if _is_job_dir(p) else None
    if p.suffix.lower() in MAP_SUFFIXES and p.is_file():
        return read_map
    return None


def map_layer(path: str | Path, name: str | None = None, **kwargs: Any) -> tuple:
    """(data, kwargs, "image") of one MRC map, scaled in A (voxel size 0 in the header: 1)."""
    import numpy as np

    from credgui.relion.mrc import read_mrc, read_voxel_size

    path = Path(path)
    data = np.asarray(read_mrc(path))
    voxel = read_voxel_size(path) or 1.0
    meta = {"path": str(path), "voxel_size": voxel}
    kw = {"name": name or path.stem, "scale": (voxel,) * data.ndim, "metadata": meta, "colormap": "gray"}
    if data.ndim == 3:
        kw["units"] = "angstrom"
    kw.update(kwargs)
    return (data, kw, "image")


def read_map(path: Any) -> list[tuple]:
    return [map_layer(_one_path(path))]


def read_job(path: Any) -> list[tuple]:
    """Open the job in credgui's widgets of the current viewer (docking them if needed)."""
    import napari

    from credgui._qt.app import add_widgets
    from credgui.errors import InputError

    job = _one_path(path)
    viewer = napari.current_viewer()
    if viewer is None:
        raise InputError(job, "no napari viewer to open the job in")
    widgets = _WIDGETS.get(viewer)
    if widgets is None:
        widgets = add_widgets(viewer)
        _WIDGETS[viewer] = widgets
    widgets["Monitor and maps"].session.open_job(job)
    return [(None,)]  # npe2: read, no layers (the monitor adds the job's maps)


def widgets_of(viewer: Any) -> dict | None:
    """The credgui widgets ``read_job`` docked into ``viewer`` (None if it did not)."""
    return _WIDGETS.get(viewer)


def sample_dir() -> Path:
    env = os.environ.get("CREDGUI_SAMPLE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "credgui" / "demo_data"


def demo_sample() -> list[tuple]:
    """The demo data set's maps (``credgui demo``'s data), in Angstrom."""
    from credgui.simulate import ensure_demo_dataset

    data = ensure_demo_dataset(sample_dir())
    layers = [
        map_layer(data / "ground_truth.mrc", "demo ground truth", rendering="iso"),
        map_layer(data / "initial_model.mrc", "demo initial model (30 A low-pass)", visible=False),
        map_layer(data / "mask.mrc", "demo mask", visible=False, opacity=0.4),
    ]
    return layers
