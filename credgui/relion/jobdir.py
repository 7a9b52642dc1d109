"""RELION 3.1 refinement job directories: iterations, model/optimiser STAR files, hook records.

What RELION 3.1.3 writes for ``--o JOB/run`` in a 3D auto-refinement (src/ml_optimiser.cpp
``MlOptimiser::write``, src/ml_optimiser_mpi.cpp ``iterate``), per iteration NNN:
``run_itNNN_optimiser.star`` (rank 1, written first), ``run_itNNN_half{1,2}_model.star`` and
``run_itNNN_half{1,2}_class001.mrc`` (ranks 1 and 2 at the same time), ``run_itNNN_sampling.star``
and ``run_itNNN_data.star`` (leader). A continuation (``--continue ... --o JOB/run_ctNNN``) writes
under the root ``run_ctNNN``. After convergence the joined last iteration writes
``run_model.star``, ``run_class001.mrc``, ``run_half{1,2}_class001_unfil.mrc`` and no optimiser.
With ``--pipeline_control JOB/`` RELION touches ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` /
``_ABORTED`` in JOB when it exits.

Because the optimiser STAR is NOT the last file of an iteration, an iteration counts as complete
only when every file of it is whole: STAR files parse and hold their last block/label, MRC files
have the size their header announces, and all of them are settled (a later iteration exists, the
job is no longer running, or they have not changed for ``SETTLE_S``). Everything here is cheap and
never raises on half-written files: parse results are cached by (path, size, mtime).

The pieces live in their own modules and are re-exported here: ``relion.layout`` (file names,
project directory), ``relion.mrc`` (``mrc_is_whole``), ``relion.star_readers`` (model/optimiser/
sampling/optics readers, parse cache), ``relion.hooklog`` (the hook's log). This module
assembles iterations from them.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from credgui.errors import InputError
from credgui.relion.hooklog import HookRecord, read_hook_records
from credgui.relion.layout import EXIT_ABORTED, EXIT_FAILURE, EXIT_SUCCESS, HOOK_LOG, JOB_FILE, project_dir_of
from credgui.relion.mrc import mrc_is_whole
from credgui.relion.star_readers import (
    ModelInfo,
    OptimiserInfo,
    file_stat,
    first_image_stack,
    read_healpix_order,
    read_model_star,
    read_optics,
    read_optimiser_star,
)

__all__ = [
    "HookRecord",
    "Iteration",
    "OptimiserInfo",
    "ModelInfo",
    "SETTLE_S",
    "find_iterations",
    "read_model_star",
    "read_optimiser_star",
    "read_hook_records",
    "read_optics",
    "first_image_stack",
    "is_relion_job_dir",
    "mrc_is_whole",
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "EXIT_ABORTED",
    "HOOK_LOG",
]

SETTLE_S = 2.0
"""Files unchanged for this long (s) count as fully written even while RELION runs."""

_OPTIMISER_RE = re.compile(r"^(?P<root>.+)_it(?P<it>\d{3,})_optimiser\.star$")
_FINAL_MODEL_RE = re.compile(r"^(?P<root>.+)_model\.star$")


@dataclass(frozen=True)
class Iteration:
    """One complete RELION iteration of a refinement job (all paths absolute).

    ``half_maps``: RELION's ``run_itNNN_half{1,2}_class001.mrc`` (the regularised maps after the
    M-step, i.e. what the hook returned, then solvent-flattened by RELION); for the final joined
    iteration (``final``) the unfiltered ``run_half{1,2}_class001_unfil.mrc`` and ``map`` is
    ``run_class001.mrc``. ``unreg_maps`` / ``denoised_maps``: the hook's
    ``ROOT_credgui_unreg.mrc`` / ``ROOT_credgui_denoised.mrc`` per half (one entry, the joined
    call, when ``final``), None where absent. ``fsc``: (n, 3) float64, spectral index,
    resolution (A), gold-standard FSC from the half-1 model star. ``angular_sampling``: RELION's
    angular step in degrees, 360 / (6 * 2^(healpix order + oversampling order)).
    ``time``: modification time (epoch s) of the iteration's last file.
    """

    number: int
    root: str
    final: bool
    optimiser_star: Path | None
    model_star: Path
    model_stars: tuple[Path, ...]
    sampling_star: Path | None
    data_star: Path | None
    half_maps: tuple[Path, ...]
    map: Path | None
    unreg_maps: tuple[Path | None, ...]
    denoised_maps: tuple[Path | None, ...]
    resolution: float
    pixel_size: float
    box: int
    current_size: int
    angular_sampling: float | None
    healpix_order: int | None
    time: float
    hook_records: tuple[HookRecord, ...] = ()
    fsc: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), compare=False, hash=False, repr=False)

    @property
    def hook_errors(self) -> tuple[HookRecord, ...]:
        return tuple(r for r in self.hook_records if r.status != "ok")



_JOB_MARKERS = (JOB_FILE, "run.out", "run.err", "note.txt", "job.star", "run_submit.script")


def is_relion_job_dir(job_dir: str | Path) -> bool:
    """A directory that holds a RELION job: credgui's job file, RELION's run.out/run.err/note.txt,
    or any ``*_optimiser.star`` / ``*_model.star``."""
    d = Path(job_dir)
    try:
        names = os.listdir(d)
    except OSError:
        return False
    if any(m in names for m in _JOB_MARKERS):
        return True
    return any(n.endswith("_optimiser.star") or n.endswith("_model.star") for n in names)


def _resolve(job_dir: Path, project_dir: Path | None, name: str | None) -> Path | None:
    """A path RELION wrote (relative to its working directory) as an absolute path."""
    if not name:
        return None
    p = Path(name)
    if p.is_absolute():
        return p
    if project_dir is not None and (project_dir / p).exists():
        return project_dir / p
    return job_dir / p.name


def _settled(paths: list[Path], now: float, settle_s: float) -> bool:
    for p in paths:
        st = file_stat(p)
        if st is None or now - st.st_mtime < settle_s:
            return False
    return True


def _angular_step(order: int | None, oversampling: int) -> float | None:
    if order is None:
        return None
    return 360.0 / (6 * 2 ** (order + oversampling))


def _hook_paths(job_dir: Path, root: str) -> tuple[Path | None, Path | None]:
    unreg = job_dir / f"{root}_credgui_unreg.mrc"
    den = job_dir / f"{root}_credgui_denoised.mrc"
    return (unreg if mrc_is_whole(unreg) else None, den if mrc_is_whole(den) else None)


def find_iterations(
    job_dir: str | Path,
    *,
    project_dir: str | Path | None = None,
    running: bool = True,
    hook_records: tuple[HookRecord, ...] | None = None,
    settle_s: float = SETTLE_S,
    problems: list[str] | None = None,
) -> tuple[Iteration, ...]:
    """The complete iterations in ``job_dir``, sorted by number (the final joined one last).

    ``running``: whether RELION may still be writing (then the newest iteration's files must
    have settled for ``settle_s`` seconds). ``project_dir``: RELION's working directory, to
    resolve the relative paths inside STAR files (default: two levels up for ``Type/jobNNN``).
    ``hook_records``: the parsed ``credgui_hook.jsonl`` (default: read here).
    Incomplete or unreadable iterations are left out; if ``problems`` is given, a one-line
    reason for each is appended. Never raises for file contents.
    """
    job = Path(job_dir)
    proj = Path(project_dir) if project_dir is not None else project_dir_of(job)
    try:
        names = os.listdir(job)
    except OSError as exc:
        raise InputError(job, f"cannot list job directory ({exc.strerror})") from None
    now = time.time()
    name_set = set(names)
    candidates: dict[int, tuple[str, Path]] = {}
    for n in names:
        m = _OPTIMISER_RE.match(n)
        if not m:
            continue
        it = int(m["it"])
        path = job / n
        prev = candidates.get(it)
        if prev is None or (file_stat(path) and file_stat(prev[1]) and file_stat(path).st_mtime > file_stat(prev[1]).st_mtime):
            candidates[it] = (m["root"], path)
    if hook_records is None:
        hook_records = read_hook_records(job)
    by_iter: dict[int, list[HookRecord]] = {}
    for r in hook_records:
        if r.iteration is not None:
            by_iter.setdefault(r.iteration, []).append(r)

    numbers = sorted(candidates)
    # RELION writes iteration N's files before it calls the hook for iteration N+1, so a hook
    # record of a later iteration proves them whole (a hook that fails at once must not hide them)
    latest_hook_iteration = max(by_iter, default=-1)
    out: list[Iteration] = []
    for k, it in enumerate(numbers):
        root, opt_path = candidates[it]
        newer_exists = k + 1 < len(numbers) or latest_hook_iteration > it
        try:
            iteration = _read_iteration(job, proj, root, it, opt_path, name_set, by_iter.get(it, []))
        except InputError as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        files = [p for p in (iteration.optimiser_star, *iteration.model_stars, iteration.sampling_star,
                             iteration.data_star, *iteration.half_maps) if p is not None]
        if running and not newer_exists and not _settled(files, now, settle_s):
            if problems is not None:
                problems.append(f"{opt_path}: iteration {it} is still being written")
            continue
        out.append(iteration)

    final = _read_final(job, proj, candidates, name_set, by_iter, running, now, settle_s, problems)
    if final is not None:
        out.append(final)
    return tuple(out)


def _read_iteration(
    job: Path, proj: Path, root: str, it: int, opt_path: Path, names: set[str], records: list[HookRecord]
) -> Iteration:
    opt = read_optimiser_star(opt_path)
    stem = f"{root}_it{it:03d}"
    models = [job / f"{stem}_half1_model.star", job / f"{stem}_half2_model.star"]
    models = [m for m in models if m.name in names]
    if not models:
        raise InputError(job / f"{stem}_half1_model.star", "model STAR not written yet")
    infos = [read_model_star(m) for m in models]
    half_maps = tuple(job / f"{stem}_half{h}_class001.mrc" for h in (1, 2)[: len(models)])
    for hm in half_maps:
        if not mrc_is_whole(hm):
            raise InputError(hm, "half map missing or not completely written")
    sampling = job / f"{stem}_sampling.star"
    sampling_path = sampling if sampling.name in names else None
    order = read_healpix_order(sampling_path)
    if sampling_path is not None and order is None:
        raise InputError(sampling, "sampling STAR not completely written")
    data = job / f"{stem}_data.star"
    hook_pairs = [_hook_paths(job, f"{stem}_half{h}_class001") for h in (1, 2)[: len(models)]]
    stats = [file_stat(p) for p in (opt_path, *models, *half_maps)]
    info = infos[0]
    return Iteration(
        number=it,
        root=root,
        final=False,
        optimiser_star=opt_path,
        model_star=models[0],
        model_stars=tuple(models),
        sampling_star=sampling_path,
        data_star=data if data.name in names else None,
        half_maps=half_maps,
        map=None,
        unreg_maps=tuple(p[0] for p in hook_pairs),
        denoised_maps=tuple(p[1] for p in hook_pairs),
        resolution=info.resolution,
        pixel_size=info.pixel_size,
        box=info.ori_size,
        current_size=info.current_size,
        angular_sampling=_angular_step(order, opt.adaptive_oversampling),
        healpix_order=order,
        time=max(s.st_mtime for s in stats if s is not None),
        hook_records=tuple(r for r in records if r.half is not None),
        fsc=info.fsc,
    )


def _read_final(job, proj, candidates, names, by_iter, running, now, settle_s, problems) -> Iteration | None:
    """The joined last iteration (``ROOT_model.star`` + ``ROOT_class001.mrc``), if whole."""
    roots = [c[0] for _, c in sorted(candidates.items())]
    root = roots[-1] if roots else None
    if root is None:
        for n in names:
            m = _FINAL_MODEL_RE.match(n)
            if m and "_it" not in m["root"] and "_half" not in m["root"]:
                root = m["root"]
                break
    if root is None:
        return None
    model = job / f"{root}_model.star"
    cmap = job / f"{root}_class001.mrc"
    if model.name not in names or cmap.name not in names:
        return None
    try:
        info = read_model_star(model)
        if not mrc_is_whole(cmap):
            raise InputError(cmap, "final map not completely written")
    except InputError as exc:
        if problems is not None:
            problems.append(str(exc))
        return None
    unfil = tuple(job / f"{root}_half{h}_class001_unfil.mrc" for h in (1, 2))
    files = [model, cmap, *[u for u in unfil if u.name in names]]
    if running and not _settled(files, now, settle_s):
        if problems is not None:
            problems.append(f"{model}: final iteration is still being written")
        return None
    number = (max(candidates) + 1) if candidates else 0
    sampling = job / f"{root}_sampling.star"
    sampling_path = sampling if sampling.name in names else None
    order = read_healpix_order(sampling_path)
    oversampling = 0
    if candidates:
        try:
            oversampling = read_optimiser_star(candidates[max(candidates)][1]).adaptive_oversampling
        except InputError:
            pass
    unreg, den = _hook_paths(job, f"{root}_it{number:03d}_class001")
    data = job / f"{root}_data.star"
    return Iteration(
        number=number,
        root=root,
        final=True,
        optimiser_star=None,
        model_star=model,
        model_stars=(model,),
        sampling_star=sampling_path,
        data_star=data if data.name in names else None,
        half_maps=tuple(u for u in unfil if mrc_is_whole(u)),
        map=cmap,
        unreg_maps=(unreg,),
        denoised_maps=(den,),
        resolution=info.resolution,
        pixel_size=info.pixel_size,
        box=info.ori_size,
        current_size=info.current_size,
        angular_sampling=_angular_step(order, oversampling),
        healpix_order=order,
        time=max((file_stat(p).st_mtime for p in files if file_stat(p) is not None), default=now),
        hook_records=tuple(r for r in by_iter.get(number, []) if r.half is None),
        fsc=info.fsc,
    )
