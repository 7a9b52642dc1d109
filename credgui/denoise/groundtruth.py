"""Ground-truth map libraries for training: atomic models -> randomly oriented maps, by family.

Why a library: computing a map with gemmi takes ~0.1 s, a training step needs several maps, and the
same few hundred structures are reused for thousands of steps; so the maps are computed once, in
several random orientations (the cube's 24 rotations alone would leave the network blind to most
orientations of a helix), and stored in one ``.npz``:

    maps (N, box, box, box) float32, z,y,x, centre of mass on voxel box//2;
    names (N,) str, families (N,) str, sources (N,) str (file paths);
    voxel_size (), box () and a JSON ``meta`` string (rotations, B-factors, how it was made).

Families keep training and validation apart (no family in both): ``split_by_family`` decides,
and the library records which families it holds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from credgui.errors import InputError
from credgui.progress import Progress

LIBRARY_FORMAT = "credgui-gt-library/1"


@dataclass(frozen=True)
class ModelEntry:
    """One atomic model and the protein family it belongs to (the unit of the train/val split)."""

    path: str
    family: str
    name: str = ""


@dataclass(frozen=True)
class Library:
    """A loaded ground-truth library (see the module docstring)."""

    maps: np.ndarray
    names: tuple[str, ...]
    families: tuple[str, ...]
    sources: tuple[str, ...]
    voxel_size: float
    box: int
    meta: dict

    def __len__(self) -> int:
        return int(self.maps.shape[0])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (unit quaternion from 4 normals)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def oriented_map(
    path: str | Path, box: int, voxel_size: float, rotation: np.ndarray | None = None
) -> np.ndarray:
    """The model's potential map, rotated by ``rotation`` about its centre of mass, (z, y, x).

    ``credgui.simulate.model.model_to_map`` with the atoms rotated first (gemmi on a grid <= 0.8 A,
    Fourier crop to ``box``, so the map is band-limited). InputError (naming the file) when
    unreadable or too large for the box.
    """
    from credgui.simulate.model import model_to_map

    return model_to_map(path, box, voxel_size, rotation=rotation)[0]


@dataclass(frozen=True)
class LibraryMap:
    """One map of a library being built: the model, its oriented map (None when it failed) and
    the one-line error that left it out."""

    entry: ModelEntry
    volume: np.ndarray | None
    error: str | None


def iter_build_library(
    entries: Sequence[ModelEntry],
    box: int,
    voxel_size: float,
    orientations: int = 2,
    seed: int = 0,
) -> Iterator[Progress]:
    """Yield a ``Progress`` (task "groundtruth", stage "map") per (model, orientation), its
    ``result`` the ``LibraryMap`` (the map, or the error that left it out).

    Models that do not fit the box or cannot be read give an error string instead of a map
    (a library of hundreds of files should not stop at one bad file).
    """
    n = len(entries) * orientations
    i = 0
    for e_index, entry in enumerate(entries):
        rng = np.random.default_rng([seed, e_index])
        for _ in range(orientations):
            rot = random_rotation(rng)
            try:
                vol = oriented_map(entry.path, box, voxel_size, rot)
                err = None
            except InputError as exc:
                vol, err = None, str(exc)
            yield Progress("groundtruth", "map", i + 1, n, err or "ok", item=entry.name,
                           result=LibraryMap(entry, vol, err))
            i += 1


def save_library(
    path: str | Path,
    maps: Sequence[np.ndarray],
    entries: Sequence[ModelEntry],
    voxel_size: float,
    meta: dict | None = None,
) -> Path:
    """Write a library ``.npz`` atomically (``credgui._io.atomic_open``)."""
    path = Path(path)
    if not maps:
        raise InputError(path, "no maps to save (every model failed or none given)")
    stack = np.stack([np.asarray(m, np.float32) for m in maps])
    full_meta = {"format": LIBRARY_FORMAT, **(meta or {})}
    full_meta["families"] = sorted({e.family for e in entries})
    path.parent.mkdir(parents=True, exist_ok=True)
    from credgui._io import atomic_open

    with atomic_open(path) as fh:
        np.savez(
            fh,
            maps=stack,
            names=np.array([e.name or Path(e.path).name for e in entries]),
            families=np.array([e.family for e in entries]),
            sources=np.array([e.path for e in entries]),
            voxel_size=np.float64(voxel_size),
            box=np.int64(stack.shape[1]),
            meta=np.array(json.dumps(full_meta)),
        )
    return path


def load_library(path: str | Path) -> Library:
    """A library written by ``save_library``; InputError naming the file otherwise."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            lib = Library(
                maps=z["maps"].astype(np.float32, copy=False),
                names=tuple(str(s) for s in z["names"]),
                families=tuple(str(s) for s in z["families"]),
                sources=tuple(str(s) for s in z["sources"]),
                voxel_size=float(z["voxel_size"]),
                box=int(z["box"]),
                meta=meta,
            )
    except FileNotFoundError:
        raise InputError(path, "ground-truth library not found") from None
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            path,
            f"not a credgui ground-truth library ({' '.join(str(exc).split())[:160]})",
        ) from None
    if meta.get("format") != LIBRARY_FORMAT:
        raise InputError(
            path, f"not a credgui ground-truth library (format {meta.get('format')!r})"
        )
    if lib.maps.ndim != 4 or len(set(lib.maps.shape[1:])) != 1:
        raise InputError(path, f"maps must be (N, box, box, box), got {lib.maps.shape}")
    return lib


def split_by_family(
    entries: Sequence[ModelEntry], validation_families: Sequence[str]
) -> tuple[list[ModelEntry], list[ModelEntry]]:
    """(train, validation): every model of a validation family goes to validation, none to train."""
    val = set(validation_families)
    unknown = val - {e.family for e in entries}
    if unknown:
        raise ValueError(f"validation families not among the models: {sorted(unknown)}")
    return [e for e in entries if e.family not in val], [
        e for e in entries if e.family in val
    ]


__all__ = [
    "Library",
    "LibraryMap",
    "ModelEntry",
    "iter_build_library",
    "load_library",
    "oriented_map",
    "random_rotation",
    "save_library",
    "split_by_family",
]


def build_split_libraries(
    entries: Sequence[ModelEntry],
    validation_families: Sequence[str],
    out_dir: str | Path,
    *,
    box: int = 64,
    voxel_size: float = 1.5,
    orientations: int = 3,
    val_orientations: int = 2,
    seed: int = 0,
) -> Iterator[Progress]:
    """Build ``OUT/gt_train.npz`` and ``OUT/gt_val.npz`` (split by family) and ``OUT/split.json``.

    Yields a ``Progress`` per map (stage: the part, "val" or "train"; ``item``: the model;
    ``message``: "ok" or why it was left out), for a progress bar.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_e, val_e = split_by_family(entries, validation_families)
    report: dict = {"box": box, "voxel_size": voxel_size, "seed": seed, "parts": {}}
    for part, part_entries, n_or in (
        ("val", val_e, val_orientations),
        ("train", train_e, orientations),
    ):
        maps, kept, failed = [], [], {}
        for p in iter_build_library(part_entries, box, voxel_size, n_or, seed):
            made = p.result
            if made.volume is not None:
                maps.append(made.volume)
                kept.append(made.entry)
            else:
                failed[made.entry.path] = made.error
            yield dataclasses.replace(p, stage=part)
        meta = {"orientations": n_or, "seed": seed, "failed": failed, "split": part}
        save_library(out / f"gt_{part}.npz", maps, kept, voxel_size, meta)
        report["parts"][part] = {
            "families": sorted({e.family for e in kept}),
            "models": sorted({e.name for e in kept}),
            "maps": len(maps),
            "failed": failed,
        }
    from credgui._io import write_text_atomic

    write_text_atomic(out / "split.json", json.dumps(report, indent=1))
