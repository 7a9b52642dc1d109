"""Run a benchmark plan: simulate each data set once, refine it with every variant, one JSON per run.

Output directory layout::

    OUT/plan.toml                       the plan as given (first run); later runs must match it
    OUT/benchmark.lock                  held (flock) while a runner works here
    OUT/data/<ds>/                      the simulated data set (credgui simulate layout)
    OUT/<ds>/                           its RELION project: links to particles.star/.mrcs, initial model
    OUT/<ds>/<variant>/                 the RELION job directory of one run
    OUT/results/<ds>__<variant>.json    the run's numbers (written atomically, last)

Why this shape: resume is decided by the result JSON alone (present, valid, status "finished",
same settings key: skipped); anything else is run again, and an old job directory is moved
aside (``<variant>.prev-N``), never deleted. A crashed run is recorded (status "failed", its
one-line error) and the next run starts.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import platform
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from credgui.bench.plan import Plan, RunSpec, as_dict, choose_denoiser, refine_kwargs
from credgui.bench.results import FORMAT, RESULTS, read_result, result_path, write_result
from credgui.errors import InputError
from credgui.progress import Progress, format_duration

__all__ = ["FORMAT", "RESULTS", "check_out_dir", "iter_benchmark", "read_result", "result_path"]

PLAN_COPY = "plan.toml"
LOCK = "benchmark.lock"
DATA_FILES = ("particles.star", "particles.mrcs", "initial_model.mrc")


def _event(kind: str, message: str, run_id: str | None = None, index: int = 0, total: int = 0,
           record: dict[str, Any] | None = None) -> Progress:
    """One benchmark progress line: ``stage`` the kind (plan, data, skip, start, iteration, done,
    failed, invalid, compare, end), ``item`` the run id (None for plan-wide lines), ``done`` /
    ``total`` the run's place in the plan, ``result`` the run's record where there is one."""
    return Progress("benchmark", kind, index, total, message, item=run_id, result=record)


def check_out_dir(out: Path, plan: Plan) -> None:
    """OUT must be new, empty, or a benchmark made from the same plan text (never touch others' data)."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    copy = out / PLAN_COPY
    if out.is_dir() and any(out.iterdir()):
        if not copy.is_file():
            raise InputError(out, "not empty and not a credgui benchmark directory (no plan.toml): choose a new -o")
        from credgui.bench.plan import parse_plan

        old = parse_plan(copy.read_text(), copy)
        if _plan_identity(old) != _plan_identity(plan):
            raise InputError(copy, f"this benchmark was made from another plan than {plan.path}: choose a new -o "
                                   "(or copy the plan you changed over this file to extend it)")
    out.mkdir(parents=True, exist_ok=True)
    if not copy.is_file():
        from credgui._io import write_text_atomic

        write_text_atomic(copy, plan.text)


def _plan_identity(plan: Plan) -> str:
    return json.dumps([plan.seed, plan.snrs, plan.variants, plan.denoiser, plan.weights, plan.dataset, plan.refine,
                       [(s.name, s.spec, s.particle_diameter) for s in plan.structures]], default=str, sort_keys=True)


def _ensure_dataset(out: Path, ds) -> Any:
    """The data set's Manifest: reused when a complete one with the plan's settings is there."""
    from credgui.simulate import Manifest, simulate_dataset
    from credgui.simulate.dataset import file_sha256

    d = out / "data" / ds.name
    s = ds.settings
    if (d / "manifest.json").is_file():
        m = Manifest.load(d)
        same = (m.seed == ds.seed and m.box == s["box"] and m.pixel_size == s["pixel_size"]
                and m.n_particles == s["n_particles"] and m.snr_target == ds.snr
                and tuple(m.defocus_um) == tuple(s["defocus_um"]) and m.model_sha256 == file_sha256(ds.structure.model))
        if not same:
            raise InputError(d / "manifest.json", "data set made with other settings than the plan: choose a new -o")
        return m, True
    # no manifest: nothing or a simulation that died half-way (ours: OUT/data is the runner's)
    return simulate_dataset(ds.structure.model, d, seed=ds.seed, snr=ds.snr, force=d.exists(),
                            box=s["box"], pixel_size=s["pixel_size"], n_particles=s["n_particles"],
                            defocus_um=tuple(s["defocus_um"]), astigmatism_um=s["astigmatism_um"],
                            max_offset_px=s["max_offset_px"]), False


def _project(out: Path, ds, manifest) -> Path:
    """OUT/<ds>/ with relative links to the data set (RELION reads stacks relative to it)."""
    proj = out / ds.name
    proj.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        link = proj / name
        target = os.path.relpath(Path(manifest.directory) / name, proj)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.exists() or link.is_symlink():
            raise InputError(link, "exists and is not the benchmark's link to its data set")
        os.symlink(target, link)
    return proj


def _move_aside(job: Path) -> Path | None:
    if not job.exists():
        return None
    n = 1
    while (job.parent / f"{job.name}.prev-{n}").exists():
        n += 1
    dst = job.parent / f"{job.name}.prev-{n}"
    os.rename(job, dst)  # a directory move (an earlier attempt set aside), not a file write
    return dst


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's reaped descendants (RELION's ranks, the hook):
    a contention-free measure of a run's cost, unlike the wall time on a shared machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _fmt(v: float | None) -> str:
    """A resolution for a progress line ("-" when there is none, e.g. iteration 0)."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f} A"


def _run_one(out: Path, plan: Plan, run: RunSpec, manifest, key: str, *, poll_s: float,
             emit) -> dict[str, Any]:
    """Launch one refinement, follow it, and return its record (status finished or failed)."""
    from credgui.bench.metrics import run_metrics
    from credgui.jobs import RefineParams, launch_local
    from credgui.jobs.launch import LaunchError
    from credgui.jobs.watch import watch_job

    ds = run.dataset
    proj = _project(out, ds, manifest)
    job = proj / run.variant
    moved = _move_aside(job)
    if moved is not None:
        emit("start", f"old job directory moved to {moved.name}")
    diameter = ds.structure.particle_diameter or float(manifest.particle_diameter_angst)
    record: dict[str, Any] = {
        "format": FORMAT, "run_id": run.run_id, "structure": ds.structure.name, "family": ds.structure.family,
        "model": str(ds.structure.model), "snr": ds.snr, "snr_measured": manifest.snr_measured, "seed": ds.seed,
        "variant": run.variant, "settings_key": key, "job_dir": str(job), "data_dir": str(manifest.directory),
        "hook_config": as_dict(dataclasses.asdict(run.hook_config)), "external_reconstruct": run.external_reconstruct, "hook": run.hook,
        "particle_diameter": diameter, "n_particles": manifest.n_particles, "box": manifest.box,
        "pixel_size": manifest.pixel_size, "mass_kda": manifest.mass_kda, "host": platform.node(),
        "cpu_count": os.cpu_count(), "load_start": _loadavg(), "start_time": time.time(),
    }
    t0 = time.monotonic()
    try:
        params = RefineParams(
            particles_star=proj / "particles.star", initial_model=proj / "initial_model.mrc", job_dir=job,
            particle_diameter=diameter, ground_truth=manifest.ground_truth, mask=manifest.mask,
            hook_config=run.hook_config, external_reconstruct=run.external_reconstruct, **refine_kwargs(plan),
        )
        from credgui.jobs.launch import relion_command

        record["relion_command"] = relion_command(params)
        cpu0 = _children_cpu_s()
        handle = launch_local(params, hook=run.hook)
    except (InputError, LaunchError, OSError) as exc:
        record.update(status="failed", error=f"launch: {' '.join(str(exc).split())}", wall_s=time.monotonic() - t0)
        return record
    emit("start", f"running {run.variant} (pid {handle.pid}, {job})")
    state = None
    seen: set = set()
    timeout = plan.timeout_minutes * 60.0
    try:
        for state in watch_job(job, poll_s=poll_s, timeout_s=timeout):
            handle.poll()
            for it in state.iterations:
                if (it.number, it.final) not in seen:
                    seen.add((it.number, it.final))
                    label = "final" if it.final else f"iteration {it.number}"
                    emit("iteration", f"{label}: {_fmt(it.resolution)} ({format_duration(time.monotonic() - t0)})")
    except BaseException:
        handle.stop()  # Ctrl-C or an error here: leave no RELION running
        raise
    wall = time.monotonic() - t0
    record["wall_s"] = round(wall, 1)
    record["load_end"] = _loadavg()
    if state is None or state.status == "running":
        handle.stop()
        record.update(status="failed", error=f"timed out after {plan.timeout_minutes:g} min (stopped)")
        return record
    if handle.process is not None:
        try:  # reap the launcher so its ranks' CPU time (they are reaped by mpirun) is counted
            handle.process.wait(timeout=120)
        except Exception:  # noqa: BLE001 - the time is informative only
            pass
    record["cpu_s"] = round(_children_cpu_s() - cpu0, 1)
    if state.status != "finished":
        record.update(status="failed", error=state.error or f"RELION ended with status {state.status}")
        return record
    try:
        record.update(run_metrics(job, manifest))
    except (InputError, ValueError) as exc:
        record.update(status="failed", error=f"metrics: {' '.join(str(exc).split())}")
        return record
    record["status"] = "finished"
    return record


def iter_benchmark(plan: Plan, out_dir: str | Path, *, retry_failed: bool = True, poll_s: float = 2.0
                   ) -> Generator[Progress, None, dict[str, Any]]:
    """Run (or resume) ``plan`` into ``out_dir``; yields ``Progress`` (task "benchmark"); returns {run_id: record}.

    Finished runs (valid JSON, status finished, same settings) are skipped; failed ones are run
    again unless ``retry_failed`` is False. A second runner on the same directory is refused
    (flock on OUT/benchmark.lock).
    """
    out = Path(os.path.abspath(out_dir))
    if any(c.isspace() for c in str(out)):
        raise InputError(out, "RELION cannot run in a folder whose path holds spaces: choose another -o")
    check_out_dir(out, plan)
    lock_fh = open(out / LOCK, "a+")
    try:
        fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_fh.close()
        raise InputError(out / LOCK, "another credgui benchmark is running in this directory") from None
    try:
        lock_fh.seek(0)
        lock_fh.truncate()
        lock_fh.write(f"{os.getpid()}\n")
        lock_fh.flush()
        return (yield from _iter_locked(plan, out, retry_failed, poll_s))
    finally:
        fcntl.flock(lock_fh, fcntl.LOCK_UN)
        lock_fh.close()


def _iter_locked(plan: Plan, out: Path, retry_failed: bool, poll_s: float):
    denoiser, weights, notice = choose_denoiser(plan.denoiser, plan.weights)
    runs = plan.runs(denoiser, weights)
    total = len(runs)
    yield _event("plan", f"{plan.title}: {len(plan.structures)} structures x {len(plan.snrs)} SNRs x "
                        f"{len(plan.variants)} variants = {total} runs in {out} (denoiser for red/cwred: {denoiser})")
    if notice:
        yield _event("plan", notice)
    results: dict[str, Any] = {}
    manifests: dict[str, Any] = {}
    for k, run in enumerate(runs, start=1):
        path = result_path(out, run)
        key = plan.settings_key(run)
        if path.exists():
            try:
                old = read_result(path)
            except InputError as exc:
                yield _event("invalid", f"{exc}; running it again", run.run_id, k, total)
                old = None
            if old is not None:
                if old["settings_key"] != key:
                    yield _event("invalid", f"{path}: made with other settings; running it again", run.run_id, k, total)
                elif old["status"] == "finished" or not retry_failed:
                    results[run.run_id] = old
                    yield _event("skip", f"done before ({old['status']}), skipped", run.run_id, k, total, old)
                    continue
                else:
                    rec = _retry_metrics(out, run, old)
                    if rec is not None:  # RELION had finished; only the metrics failed (e.g. a fixed bug)
                        write_result(path, rec)
                        results[run.run_id] = rec
                        yield _event("done" if rec["status"] == "finished" else "failed",
                                    f"metrics recomputed from the finished job: {rec['status']}"
                                    + (f" ({rec.get('error')})" if rec["status"] != "finished" else ""),
                                    run.run_id, k, total, rec)
                        yield from _compare_events(out, plan, run, results, k, total)
                        continue
                    yield _event("invalid", f"failed before ({old.get('error')}); running it again", run.run_id, k, total)
        ds = run.dataset
        if ds.name not in manifests:
            t = time.monotonic()
            try:
                manifests[ds.name], reused = _ensure_dataset(out, ds)
            except InputError as exc:
                rec = {"format": FORMAT, "run_id": run.run_id, "structure": ds.structure.name, "snr": ds.snr,
                       "variant": run.variant, "settings_key": key, "status": "failed", "error": f"data: {exc}"}
                write_result(path, rec)
                results[run.run_id] = rec
                yield _event("failed", f"failed: data: {exc}", run.run_id, k, total, rec)
                continue
            m = manifests[ds.name]
            yield _event("data", f"data set {ds.name}: {'reused' if reused else f'simulated in {time.monotonic() - t:.1f} s'} "
                                f"({m.n_particles} particles, box {m.box}, {m.mass_kda:.0f} kDa, SNR {m.snr_measured:.4g}, "
                                f"seed {ds.seed})", run.run_id, k, total)
        pending: list[Progress] = []

        def emit(kind: str, message: str, _run=run, _k=k) -> None:
            pending.append(_event(kind, message, _run.run_id, _k, total))

        gen = _run_one_gen(out, plan, run, manifests[ds.name], key, poll_s, emit, pending)
        rec = yield from gen
        write_result(path, rec)
        results[run.run_id] = rec
        if rec["status"] == "finished":
            ae = rec["angular_error"]
            yield _event("done", f"finished in {format_duration(rec['wall_s'])}, {rec['iterations']} iterations: reported "
                                f"{_fmt(rec['reported_angst'])}, vs truth {_fmt(rec['fsc_truth_05_angst'])} (0.5) "
                                f"{_fmt(rec['fsc_truth_0143_angst'])} (0.143), overestimation "
                                f"{rec['overestimation_shells']:+.1f} shells, angular error median "
                                f"{ae['median_deg']:.2f} deg", run.run_id, k, total, rec)
        else:
            yield _event("failed", f"failed: {rec.get('error')}", run.run_id, k, total, rec)
        # relion vs none, as soon as both exist
        yield from _compare_events(out, plan, run, results, k, total)
    n_ok = sum(1 for r in results.values() if r.get("status") == "finished")
    yield _event("end", f"{n_ok}/{total} runs finished; report: credgui benchmark report {out}")
    return results


def _retry_metrics(out: Path, run: RunSpec, old: dict[str, Any]) -> dict[str, Any] | None:
    """A new record when ``old`` failed only in the metrics and its RELION job finished."""
    from credgui.bench.metrics import run_metrics
    from credgui.jobs.watch import scan_job
    from credgui.simulate import Manifest

    if not str(old.get("error", "")).startswith("metrics:") or not old.get("job_dir") or not old.get("data_dir"):
        return None
    try:
        if scan_job(old["job_dir"]).status != "finished":
            return None
        manifest = Manifest.load(old["data_dir"])
    except InputError:
        return None
    rec = {k: v for k, v in old.items() if k != "error"}
    try:
        rec.update(run_metrics(old["job_dir"], manifest))
        rec["status"] = "finished"
    except (InputError, ValueError) as exc:
        rec.update(status="failed", error=f"metrics: {' '.join(str(exc).split())}")
    return rec


def _run_one_gen(out, plan, run, manifest, key, poll_s, emit, pending):
    """_run_one in a worker thread, its progress events yielded here as they happen (so the CLI
    prints them live and the GUI could wrap this generator in a thread_worker). Closing the
    generator or Ctrl-C stops the RELION job."""
    import threading

    box: dict[str, Any] = {}
    cond = threading.Condition()

    def target() -> None:
        try:
            box["rec"] = _run_one(out, plan, run, manifest, key, poll_s=poll_s, emit=emit_locked)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            box["exc"] = exc
        with cond:
            box["done"] = True
            cond.notify_all()

    def emit_locked(kind: str, message: str) -> None:
        with cond:
            emit(kind, message)
            cond.notify_all()

    th = threading.Thread(target=target, name=f"bench-{run.run_id}", daemon=True)
    th.start()
    try:
        while True:
            with cond:
                while not pending and not box.get("done"):
                    cond.wait(timeout=1.0)
                events = list(pending)
                pending.clear()
                done = box.get("done", False)
            for ev in events:
                yield ev
            if done:
                break
    except BaseException:
        _stop_job(out / run.dataset.name / run.variant)
        th.join(timeout=30)
        raise
    th.join()
    if "exc" in box:
        raise box["exc"]
    return box["rec"]


def _stop_job(job: Path) -> None:
    """Stop a run whose runner is interrupted (Ctrl-C, generator closed)."""
    from credgui.jobs.control import stop_job
    from credgui.jobs.jobfile import JOB_FILE

    if (job / JOB_FILE).is_file():
        try:
            stop_job(job, timeout=15.0)
        except Exception:  # noqa: BLE001 - best effort while unwinding
            pass


def _compare_events(out: Path, plan: Plan, run: RunSpec, results: dict, k: int, total: int):
    """Once a data set has finished relion and none runs: FSC between their final maps."""
    if run.variant not in ("relion", "none"):
        return
    a = results.get(f"{run.dataset.name}__relion")
    b = results.get(f"{run.dataset.name}__none")
    if not a or not b or a.get("status") != "finished" or b.get("status") != "finished":
        return
    from credgui.bench.report import compare_relion_none

    try:
        cmp = compare_relion_none(out, run.dataset.name, a, b)
    except InputError as exc:
        yield _event("compare", f"relion vs none: {exc}", run.run_id, k, total)
        return
    yield _event("compare", f"relion vs none final maps: FSC >= {cmp['fsc_min_to_resolution']:.5f} up to "
                           f"{_fmt(cmp['up_to_angst'])}, correlation {cmp['correlation']:.6f}", run.run_id, k, total)
