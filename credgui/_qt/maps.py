"""Maps of one iteration as napari layers: central slices in the grid, isosurfaces, volumes.

``load_maps`` is a generator run in a ``thread_worker``: it reads the MRC files (credgui.relion.mrc),
standardises each map for display (zero mean, unit standard deviation over the box, so one
contrast and one contour level in sigma units fit maps of different scale: x~, f(x~), RELION's
map, the ground truth), runs marching cubes (scikit-image) at the shared level, and computes each
map's FSC against the ground truth with the core's ``credgui.metrics.truth.fsc_vs_truth``. It yields one
``LoadedMap`` per map, then a ``MapsSummary``; ``MapLayers`` applies them on the GUI thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from credgui._qt._state import MAP_KINDS, MAP_LABELS

PLANES = {"xy (z = centre)": (0, 1, 2), "xz (y = centre)": (1, 0, 2), "yz (x = centre)": (2, 0, 1)}
MODES = ("slices", "surfaces", "volume")
LAYER_PREFIX = "credgui: "


@dataclass(frozen=True)
class MapRequest:
    """Everything one load needs (captured inputs; the worker touches nothing else)."""

    iteration: int
    paths: dict[str, Path]
    level: float | None = None  # contour level in sigma; None: automatic
    mask: Path | None = None
    pixel_size: float | None = None
    want_surfaces: bool = True
    want_fsc: bool = True
    requested_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LoadedMap:
    kind: str
    path: Path
    volume: np.ndarray  # (z, y, x) float32, standardised
    vertices: np.ndarray | None  # (V, 3) z,y,x voxel coordinates
    faces: np.ndarray | None  # (F, 3) int
    voxel_size: float = 1.0  # A per voxel: the layers' scale, so napari shows Angstrom


@dataclass(frozen=True)
class TruthFsc:
    """FSC of one map against the ground truth (``credgui.metrics.truth.fsc_vs_truth``) from
    shell 1; ``frequency`` in 1/A; ``res_05``/``res_0143``: the core's crossings (A)."""

    kind: str
    frequency: np.ndarray
    fsc: np.ndarray
    masked: bool
    res_05: float = float("nan")
    res_0143: float = float("nan")


@dataclass(frozen=True)
class MapsSummary:
    iteration: int
    kinds: tuple[str, ...]
    contrast: tuple[float, float]
    level: float
    truth_fsc: tuple[TruthFsc, ...]
    errors: tuple[str, ...]
    requested_at: float
    pixel_size: float | None


def _standardise(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float32)
    std = float(volume.std())
    return (volume - float(volume.mean())) / (std if std > 0 else 1.0)


DEFAULT_LEVEL = 1.0
"""Default shared contour in sigma: a 1-sigma contour of a standardised simulated ground truth
encloses about its molecular volume (measured: 2.7 % of a 40^3 box for a 48 kDa protein)."""


def surface(volume: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of a standardised map at ``level`` sigma; empty arrays when out of range."""
    from skimage.measure import marching_cubes

    if not (float(volume.min()) < level < float(volume.max())):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    verts, faces, _, _ = marching_cubes(volume, level=level, step_size=1, allow_degenerate=False)
    return verts.astype(np.float32), faces.astype(np.int32)


def load_maps(request: MapRequest) -> Iterator[Any]:
    """Read, standardise and mesh the maps of ``request``; yields LoadedMap..., MapsSummary.

    Never raises: a missing, half-written or wrong file becomes one line in ``summary.errors``.
    """
    from credgui.relion.mrc import read_mrc, read_voxel_size

    raw: dict[str, np.ndarray] = {}
    std: dict[str, np.ndarray] = {}
    errors: list[str] = []
    pixel_size = request.pixel_size
    for kind, _label in MAP_KINDS:
        path = request.paths.get(kind)
        if path is None:
            continue
        try:
            data = read_mrc(path)
            if data.ndim != 3:
                raise ValueError(f"{path}: not a 3D map, shape {data.shape}")
            if pixel_size is None and kind != "ground_truth":
                pixel_size = read_voxel_size(path) or None
        except Exception as exc:  # noqa: BLE001 (reported in the panel)
            errors.append(f"{MAP_LABELS[kind]}: {exc}")
            continue
        raw[kind] = data
        std[kind] = _standardise(data)
        yield None  # lets quit() stop a superseded load between files
    shapes = {v.shape for v in raw.values()}
    if len(shapes) > 1:
        ref_shape = next((raw[k].shape for k in raw if k != "ground_truth"), None)
        for kind in [k for k in raw if raw[k].shape != ref_shape]:
            errors.append(f"{MAP_LABELS[kind]}: box {raw[kind].shape} differs from {ref_shape}; not shown")
            raw.pop(kind)
            std.pop(kind)
    if not std:
        yield MapsSummary(request.iteration, (), (0.0, 1.0), 0.0, (), tuple(errors), request.requested_at, pixel_size)
        return
    level = request.level if request.level is not None else DEFAULT_LEVEL
    allv = np.concatenate([v.ravel()[:: max(1, v.size // 200_000)] for v in std.values()])
    lo, hi = np.percentile(allv, [0.5, 99.8])
    contrast = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    for kind, volume in std.items():
        verts = faces = None
        if request.want_surfaces:
            verts, faces = surface(volume, level)
        yield LoadedMap(kind, request.paths[kind], volume, verts, faces, float(pixel_size or 1.0))
    truth: list[TruthFsc] = []
    if request.want_fsc and "ground_truth" in raw and pixel_size:
        for result in _truth_fsc(raw, request.mask, pixel_size):
            if isinstance(result, TruthFsc):
                truth.append(result)
            elif isinstance(result, str):
                errors.append(result)
            yield None  # between maps: quit() can stop here
    yield MapsSummary(
        request.iteration, tuple(std), contrast, level, tuple(truth), tuple(errors),
        request.requested_at, pixel_size,
    )


_MASKS: dict[tuple, np.ndarray] = {}
"""Soft mask made from the ground truth, reused across iterations (it does not change)."""


def _truth_fsc(raw: dict[str, np.ndarray], mask_path: Path | None, pixel_size: float) -> Iterator[Any]:
    """FSC of each map vs the ground truth, inside the soft solvent mask when one is known.

    Yields a TruthFsc per map, or a one-line error string."""
    from credgui.metrics.masks import soft_mask_from_map
    from credgui.metrics.truth import fsc_vs_truth
    from credgui.relion.mrc import read_mrc

    gt = raw["ground_truth"]
    mask = None
    if mask_path is not None:
        try:
            mask = read_mrc(mask_path, expect_shape=gt.shape)
        except Exception as exc:  # noqa: BLE001
            yield f"mask: {exc}; using a soft mask made from the ground truth"
    if mask is None:
        key = (gt.shape, float(gt.sum()), float(pixel_size))
        mask = _MASKS.get(key)
        if mask is None:
            try:
                mask = soft_mask_from_map(gt, pixel_size)
                _MASKS.clear()  # one truth per job: keep the last one only
                _MASKS[key] = mask
            except Exception as exc:  # noqa: BLE001
                yield f"soft mask from the ground truth: {exc}; FSC vs truth unmasked"
    for kind, volume in raw.items():
        if kind == "ground_truth":
            continue
        try:
            r = fsc_vs_truth(volume, gt, pixel_size, mask)
        except Exception as exc:  # noqa: BLE001
            yield f"FSC {MAP_LABELS[kind]} vs truth: {exc}"
            continue
        yield TruthFsc(kind, r.frequency[1:], r.fsc[1:], r.masked, r.res_05, r.res_0143)


class MapLayers:
    """The credgui layers of one viewer; applies LoadedMap/MapsSummary on the GUI thread."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.mode = "slices"
        self.plane = next(iter(PLANES))
        self.level = 0.0
        self.contrast = (0.0, 1.0)
        self.kinds: tuple[str, ...] = ()
        self.expected: set[str] = set()  # kinds that get a layer before their first map
        self._placeholders: set[str] = set()  # kinds whose layers now hold zeros
        self.shown_iteration: int | None = None
        self._centred_shape: tuple[int, ...] | None = None

    # layer names
    @staticmethod
    def image_name(kind: str) -> str:
        return LAYER_PREFIX + MAP_LABELS[kind]

    @staticmethod
    def surface_name(kind: str) -> str:
        return LAYER_PREFIX + MAP_LABELS[kind] + " (surface)"

    def _layer(self, name: str) -> Any:
        try:
            return self.viewer.layers[name]
        except KeyError:
            return None

    def apply_map(self, item: LoadedMap) -> None:
        self.apply_image(item)
        self.apply_surface(item)

    def missing_layers(self) -> list[str]:
        """Expected kinds that have no layer yet."""
        return [k for k, _ in MAP_KINDS if k in self.expected and self._layer(self.image_name(k)) is None]

    def apply_placeholder(self, kind: str, shape: tuple[int, ...]) -> None:
        """Add the layers of a map not written yet, holding zeros (a grey cell in the grid)."""
        if self._layer(self.image_name(kind)) is not None:
            return
        empty = LoadedMap(kind, Path(), np.zeros(shape, np.float32), np.zeros((0, 3), np.float32),
                          np.zeros((0, 3), np.int32), getattr(self, "_voxel_size", 1.0))
        self.apply_image(empty)
        self.apply_surface(empty)
        self._placeholders.add(kind)

    def apply_image(self, item: LoadedMap) -> None:
        """Update (or add) the Image layer of one map; GUI thread."""
        self._placeholders.discard(item.kind)
        if item.path != Path():
            self._voxel_size = item.voxel_size
        image = self._layer(self.image_name(item.kind))
        if image is None:
            image = self.viewer.add_image(
                item.volume,
                name=self.image_name(item.kind),
                colormap="gray",
                contrast_limits=self.contrast,
                rendering="iso",
                iso_threshold=self.level,
                scale=(item.voxel_size,) * 3,
                units="angstrom",
                metadata={"credgui_kind": item.kind, "path": str(item.path)},
            )
        else:
            image.data = item.volume
            if tuple(image.scale) != (item.voxel_size,) * 3:
                image.scale = (item.voxel_size,) * 3
            image.metadata = {"credgui_kind": item.kind, "path": str(item.path)}
        _set(image, "visible", self.mode in ("slices", "volume"))
        if self._centred_shape != item.volume.shape:
            self._centred_shape = item.volume.shape
            self.centre()

    def apply_surface(self, item: LoadedMap) -> None:
        """Update (or add) the Surface layer of one map; GUI thread (a separate event-loop turn
        from ``apply_image``: at box 128 each costs up to ~50 ms)."""
        if item.vertices is not None:
            surf = self._layer(self.surface_name(item.kind))
            data = (item.vertices, item.faces)
            if surf is None:
                surf = self.viewer.add_surface(
                    data if len(item.faces) else _empty_surface(),
                    name=self.surface_name(item.kind),
                    colormap="gray",
                    shading="smooth",
                    scale=(item.voxel_size,) * 3,
                    units="angstrom",
                    metadata={"credgui_kind": item.kind},
                )
            else:
                surf.data = data if len(item.faces) else _empty_surface()
                if tuple(surf.scale) != (item.voxel_size,) * 3:
                    surf.scale = (item.voxel_size,) * 3
            _set(surf, "visible", self.mode == "surfaces")

    def apply_summary(self, summary: MapsSummary) -> None:
        self.kinds = summary.kinds
        self.contrast = summary.contrast
        self.level = summary.level
        self.shown_iteration = summary.iteration
        for kind, _ in MAP_KINDS:
            image = self._layer(self.image_name(kind))
            if image is None:
                continue
            if kind not in summary.kinds and kind in self.expected:  # not written (yet)
                if kind not in self._placeholders:
                    self._placeholders.add(kind)
                    image.data = np.zeros_like(image.data)
                    surface = self._layer(self.surface_name(kind))
                    if surface is not None:
                        surface.data = _empty_surface()
                self._show_for_mode(kind)
                continue
            if kind not in summary.kinds:  # that map no longer exists for this iteration
                _set(image, "visible", False)
                _set(self._layer(self.surface_name(kind)), "visible", False)
                continue
            _set(image, "contrast_limits", summary.contrast)
            _set(image, "iso_threshold", summary.level)
        self.apply_mode()

    def _show_for_mode(self, kind: str) -> None:
        _set(self._layer(self.image_name(kind)), "visible", self.mode in ("slices", "volume"))
        _set(self._layer(self.surface_name(kind)), "visible", self.mode == "surfaces")

    def apply_mode(self) -> None:
        grid = getattr(self.viewer, "canvas", None)
        grid = grid.grid if grid is not None and hasattr(grid, "grid") else self.viewer.grid
        for kind in self.kinds:
            self._show_for_mode(kind)
        for kind in self.expected - set(self.kinds):
            self._show_for_mode(kind)
        _set(grid, "enabled", True)
        _set(self.viewer.dims, "ndisplay", 2 if self.mode == "slices" else 3)
        if self.mode == "slices":
            _set(self.viewer.dims, "order", PLANES[self.plane])

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.apply_mode()
        self.viewer.reset_view()

    def set_plane(self, plane: str) -> None:
        self.plane = plane
        self.apply_mode()
        self.centre()

    def set_contrast(self, contrast: tuple[float, float]) -> None:
        self.contrast = contrast
        for kind in self.kinds:
            _set(self._layer(self.image_name(kind)), "contrast_limits", contrast)

    def centre(self) -> None:
        if self._centred_shape is None:
            return
        self.viewer.dims.current_step = tuple(n // 2 for n in self._centred_shape)
        self.viewer.reset_view()

    def grid_order(self) -> list[str]:
        """Labels of the maps shown, in napari's grid order (layer-list order, row-major)."""
        return [
            MAP_LABELS[layer.metadata["credgui_kind"]]
            for layer in self.viewer.layers
            if layer.visible and layer.metadata.get("credgui_kind") in self.kinds
        ]

    def image_layers(self) -> list[Any]:
        return [l for k in self.kinds if (l := self._layer(self.image_name(k))) is not None]

    def surface_layers(self) -> list[Any]:
        return [l for k in self.kinds if (l := self._layer(self.surface_name(k))) is not None]


def current_slices(layers: MapLayers) -> list[tuple[str, np.ndarray]]:
    """(label, 2D slice) of each shown map in the displayed plane at the current dims point."""
    dims = layers.viewer.dims
    order = tuple(dims.order)
    point = [round(p) for p in dims.current_step]
    out = []
    for kind in layers.kinds:
        layer = layers._layer(layers.image_name(kind))
        if layer is None or not layer.visible:
            continue
        volume = np.asarray(layer.data)
        index = [slice(None)] * 3
        index[order[0]] = min(max(point[order[0]], 0), volume.shape[order[0]] - 1)
        plane = volume[tuple(index)]
        # rows/columns in the displayed order (order[1], order[2])
        rest = [ax for ax in range(3) if ax != order[0]]
        if [order[1], order[2]] != rest:
            plane = plane.T
        out.append((MAP_LABELS[kind], plane))
    return out


def write_slices(slices: list[tuple[str, np.ndarray]], contrast: tuple[float, float], folder: Path,
                 stem: str = "credgui_slices") -> list[Path]:
    """One grey PNG per slice (shared contrast) and an SVG figure with them side by side,
    labelled. Runs in a worker."""
    import base64
    import io

    from skimage.io import imsave

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = contrast
    written, tiles = [], []
    for label, plane in slices:
        img = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        img8 = (img * 255).astype(np.uint8)
        safe = "".join(c if c.isalnum() else "_" for c in label).strip("_")
        path = folder / f"{stem}_{safe}.png"
        imsave(str(path), img8, check_contrast=False)
        written.append(path)
        buf = io.BytesIO()
        imsave(buf, img8, format="png", check_contrast=False)
        tiles.append((label, img8.shape, base64.b64encode(buf.getvalue()).decode()))
    cell, pad, text_h = 256, 12, 22
    cols = min(len(tiles), 4) or 1
    rows = -(-len(tiles) // cols)
    width, height = cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="white"/>'
        )
    ]
    for k, (label, _shape, data) in enumerate(tiles):
        x = pad + (k % cols) * (cell + pad)
        y = pad + (k // cols) * (cell + text_h + pad)
        parts.append(f'<text x="{x}" y="{y + 16}" font-family="sans-serif" font-size="14">{label}</text>')
        parts.append(
            f'<image x="{x}" y="{y + text_h}" width="{cell}" height="{cell}" '
            f'style="image-rendering:pixelated" xlink:href="data:image/png;base64,{data}"/>'
        )
    parts.append("</svg>")
    svg = folder / f"{stem}.svg"
    svg.write_text("\n".join(parts))
    return written + [svg]


def _set(obj: Any, name: str, value: Any) -> None:
    """Set an evented attribute only when it changes: every napari setter redraws (measured:
    setting ``visible`` to its own value costs ~25 ms in grid mode)."""
    if obj is None:
        return
    current = getattr(obj, name)
    if isinstance(value, tuple):
        same = tuple(current) == value
    else:
        same = current == value
    if not same:
        setattr(obj, name, value)


def _empty_surface() -> tuple[np.ndarray, np.ndarray]:
    """A degenerate one-triangle surface (napari needs at least one face)."""
    return np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.int32)
