"""Sets of map pairs at their own sampling (the data of training and evaluation): one
``Intermediate`` per map, ``save_intermediates`` / ``load_intermediates`` for the ``.npz`` set.

Harvesting (``denoise.harvest``), the simulated pairs (``denoise.pairs``) and the
RELION-faithful pairs (``denoise.reconstructed``) all make these; no torch here.

A set (format 2) is one ``.npz``: ``input_NNNNNN`` / ``target_NNNNNN`` (/ ``truth_NNNNNN``) maps
float32 at their own box, ``resolution`` (A, FSC 0.143), ``pixel_size`` (A/px) per map and a
JSON ``meta`` (format, jobs, the per-map rows: job, iteration, half, scale, box, draws), with
the same JSON beside it (``.json``), both written atomically (``credgui._io``). Format 1
(stacked maps at one ``voxel_size``) is still read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from credgui._io import atomic_open, write_text_atomic
from credgui.errors import InputError

__all__ = ["SET_FORMAT", "SET_FORMAT_1", "Intermediate", "IntermediateSet", "load_intermediates",
           "save_intermediates"]

SET_FORMAT = "credgui-intermediates/2"
SET_FORMAT_1 = "credgui-intermediates/1"


@dataclass(frozen=True)
class Intermediate:
    """One map pair, at the map's own sampling (box, box, box) float32: x~, its target x^ and
    (optional) the ground truth on x~'s scale. ``pixel_size`` None: the set's ``voxel_size``."""

    job: str
    iteration: int
    half: int
    resolution: float
    scale: float
    input: np.ndarray
    target: np.ndarray
    truth: np.ndarray | None = None  # the ground truth on x~'s scale (not low-passed)
    pixel_size: float | None = None  # A/px of these maps
    extra: dict | None = None  # JSON-able per-map facts (what was drawn, the hook call)


def save_intermediates(
    path: str | Path,
    items: Sequence[Intermediate],
    voxel_size: float | None = None,
    meta: dict | None = None,
) -> Path:
    """Write a set (format 2: every map at its own box and pixel size; npz + JSON index
    beside it), atomically. ``voxel_size``: the pixel size of items that give none."""
    path = Path(path)
    if not items:
        raise InputError(path, "no intermediate maps to save")
    pixels = [it.pixel_size if it.pixel_size is not None else voxel_size for it in items]
    if any(p is None or not p > 0 for p in pixels):
        raise InputError(path, "every map needs a pixel size (give voxel_size)")
    jobs = sorted({it.job for it in items})
    rows = [
        {"job": it.job, "iteration": it.iteration, "half": it.half, "resolution": it.resolution,
         "scale": it.scale, "pixel_size": p, "box": int(it.input.shape[0]), **(it.extra or {})}
        for it, p in zip(items, pixels, strict=True)
    ]
    full = {"format": SET_FORMAT, "jobs": jobs, **(meta or {})}
    arrays: dict[str, np.ndarray] = {}
    for i, it in enumerate(items):
        if it.input.shape != it.target.shape or it.input.ndim != 3:
            raise InputError(path, f"map {i}: input {it.input.shape} and target {it.target.shape} differ")
        arrays[f"input_{i:06d}"] = np.asarray(it.input, np.float32)
        arrays[f"target_{i:06d}"] = np.asarray(it.target, np.float32)
        if it.truth is not None:
            arrays[f"truth_{i:06d}"] = np.asarray(it.truth, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        np.savez(
            fh, **arrays,
            resolution=np.array([it.resolution for it in items], np.float64),
            pixel_size=np.array(pixels, np.float64),
            meta=np.array(json.dumps({**full, "maps": rows})),
        )
    write_text_atomic(path.with_suffix(".json"), json.dumps({**full, "maps": rows}, indent=1))
    return path


@dataclass(frozen=True)
class IntermediateSet:
    """Map pairs at their own sampling: ``inputs[i]`` x~ (box_i^3), ``targets[i]`` x^,
    ``truths[i]`` the ground truth on x~'s scale (or None), ``pixel_size[i]`` A/px,
    ``resolution[i]`` nominal A; ``rows`` the per-map index (job, iteration, half, draws)."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    resolution: np.ndarray
    pixel_size: np.ndarray
    meta: dict
    truths: list[np.ndarray] | None = None
    rows: tuple[dict, ...] = ()

    def __len__(self) -> int:
        return len(self.inputs)

    def items(self) -> list[Intermediate]:
        """Back to items (to extend a set and save it again)."""
        rows = self.rows or tuple({} for _ in self.inputs)
        keep = {"job", "iteration", "half", "resolution", "scale", "pixel_size", "box"}
        return [
            Intermediate(str(r.get("job", "")), int(r.get("iteration", 0)), int(r.get("half", 0)),
                         float(self.resolution[i]), float(r.get("scale", 1.0)), self.inputs[i], self.targets[i],
                         self.truths[i] if self.truths is not None else None, float(self.pixel_size[i]),
                         {k: v for k, v in r.items() if k not in keep})
            for i, r in enumerate(rows)
        ]


def _load_one(path: Path, with_truths: bool = True) -> IntermediateSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") == SET_FORMAT_1:  # stacked maps at one voxel size
                inputs = list(z["inputs"].astype(np.float32, copy=False))
                targets = list(z["targets"].astype(np.float32, copy=False))
                truths = list(z["truths"].astype(np.float32)) if with_truths and "truths" in z.files else None
                res = z["resolution"].astype(np.float64)
                pix = np.full(len(inputs), float(z["voxel_size"]))
                rows = ()
            else:
                n = len(z["resolution"])
                inputs = [z[f"input_{i:06d}"] for i in range(n)]
                targets = [z[f"target_{i:06d}"] for i in range(n)]
                has_truth = with_truths and all(f"truth_{i:06d}" in z.files for i in range(n))
                truths = [z[f"truth_{i:06d}"] for i in range(n)] if has_truth else None
                res = z["resolution"].astype(np.float64)
                pix = z["pixel_size"].astype(np.float64)
                rows = tuple(meta.pop("maps", []))
    except FileNotFoundError:
        raise InputError(path, "intermediate set not found") from None
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            path, f"not a credgui intermediate set ({' '.join(str(exc).split())[:160]})"
        ) from None
    if meta.get("format") not in (SET_FORMAT, SET_FORMAT_1):
        raise InputError(path, f"not a credgui intermediate set (format {meta.get('format')!r})")
    return IntermediateSet(inputs, targets, res, pix, meta, truths, rows)


def load_intermediates(path: str | Path, with_truths: bool = True) -> IntermediateSet:
    """A set written by ``save_intermediates`` (format 1 or 2), or a folder of them (the shards
    of ``credgui train-data reconstruct``), as one set; InputError naming the file otherwise.
    ``with_truths`` False leaves the ground truths on disk (training needs only x~ and x^)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.npz"))
        if not shards:
            raise InputError(path, "no intermediate sets (*.npz) in this folder")
        sets = [_load_one(p, with_truths) for p in shards]
        have_truth = all(s.truths is not None for s in sets)
        return IntermediateSet(
            [a for s in sets for a in s.inputs], [a for s in sets for a in s.targets],
            np.concatenate([s.resolution for s in sets]), np.concatenate([s.pixel_size for s in sets]),
            {**sets[0].meta, "shards": [p.name for p in shards]},
            [a for s in sets for a in s.truths] if have_truth else None,
            tuple(r for s in sets for r in (s.rows or tuple({} for _ in s.inputs))),
        )
    return _load_one(path, with_truths)


