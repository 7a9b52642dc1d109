"""Run the bundled demo: a real CW-RED 3D auto-refinement of a simulated data set, end to end.

1. Makes the demo data set from the bundled structure (the dopamine D2 receptor-T4 lysozyme
   fusion, 48 kDa: 1200 particles, box 64 at 2.2 A/px, SNR 0.15) in DIR/data, or reuses it when
   a complete one with the same settings is already there (a few seconds to make).
2. Runs RELION 3.1's 3D auto-refine on it with credgui's M-step (credgui-reconstruct), in the
   RELION project DIR, as job DIR/Refine3D/jobNNN (the next free number: nothing is
   overwritten). Sized for a workstation: 3 MPI processes (a leader and two workers) x 1 thread,
   --healpix_order 2 --auto_local_healpix_order 3 --firstiter_cc, from the data set's 30 A low-pass, with
   --particle_diameter from the structure. Measured: 13 iterations + the final one, about 10 CPU
   minutes per worker (about 12 minutes on 2 idle cores), RELION 4.54 A, Nyquist 4.40 A.
3. Prints one line per iteration, then a summary: RELION's resolution, the FSC of the final map
   against the ground truth inside the soft mask (0.143 and 0.5 crossings), the angular error
   against the true poses, the wall time and where the maps are. The same numbers go to JOB/credgui_demo_summary.json.

The denoiser is the shipped trained model when resources/models has one, else "none" (RELION's
own Gaussian prior: the hook then reproduces relion_refine's M-step). Ctrl-C stops RELION.

examples:
  credgui demo                          # ./credgui_demo/data and ./credgui_demo/Refine3D/job001
  credgui demo --no-gui                 # terminal only (the app opens by default when there is a display)
  credgui demo --dir /scratch/demo      # elsewhere
  credgui demo --particles 300 --max-iterations 4     # a quick look (not converged)
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from credgui._io import write_json_atomic
from credgui.errors import InputError
from credgui.progress import ProgressBar, format_duration

SUMMARY_NAME = "credgui_demo_summary.json"
DEFAULT_DIR = Path("credgui_demo")
PARTICLES_NAME = "demo_particles.star"
"""The job's particle list: the data set's, with image names relative to the project (RELION
reads stacks relative to its working directory)."""

# RELION sampling, measured on 2 cores (README "The demo"): order 4 makes one iteration a global
# 3.75-degree search costing > 18 CPU-minutes per worker; 3 keeps the whole run near 15 minutes.
SAMPLING = dict(
    mpi_procs=3,
    threads=1,
    pad=2,
    ini_high=30.0,
    healpix_order=2,
    auto_local_healpix_order=3,
    offset_range=5.0,
    offset_step=2.0,
)
UNET_WEIGHTS = ("models", "cwred_unet.pt")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help="demo folder: the RELION project (default ./credgui_demo)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="where the demo data set is made or reused (default DIR/data)")
    parser.add_argument("--gui", action=argparse.BooleanOptionalAction, default=None,
                        help="open the napari app on the job while it runs (default: when a display "
                             "is available; --no-gui never)")
    parser.add_argument("--denoiser", default="auto",
                        help="auto (the shipped model if there is one, else none), none, or a plugin name")
    parser.add_argument("--particles", type=int, metavar="N",
                        help="refine only the first N particles (quicker, worse; default all)")
    parser.add_argument("--max-iterations", type=int, metavar="N",
                        help="stop after iteration N (RELION's --auto_iter_max; default: convergence)")
    parser.add_argument("--poll", type=float, default=2.0, metavar="S", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------
# pieces (plain functions: the tests and the GUI can call them)
# --------------------------------------------------------------------------------------------


def choose_denoiser(requested: str = "auto") -> tuple[str, str | None, str | None]:
    """(denoiser name, weights path or None, one-line notice or None). ``auto``: the ``unet``
    plugin with the shipped weights when resources/models holds them, else ``none``."""
    from credgui.resources import resource_path

    if requested != "auto":
        return requested, None, None
    weights = resource_path(*UNET_WEIGHTS)
    if weights.is_file():
        from credgui.denoise.registry import available_denoisers  # no torch import

        if "unet" in available_denoisers():
            return "unet", str(weights), None
    return "none", None, (
        "no trained denoiser ships yet (resources/models): running with denoiser \"none\", "
        "RELION's own Gaussian prior through credgui's hook"
    )


def write_project_particles(manifest, project: Path, out: Path, n_particles: int | None = None) -> Path:
    """Write ``out``: the data set's particles.star with image names relative to ``project``
    (absolute when the data lies outside it), optionally only the first ``n_particles``."""
    from credgui.relion.star import format_star, read_star, write_star_atomic

    src = Path(manifest.particles_star)
    blocks = read_star(src)
    if "optics" not in blocks or "particles" not in blocks:
        raise InputError(src, "needs data_optics and data_particles blocks (RELION 3.1)")
    particles = dict(blocks["particles"])
    names = particles.get("rlnImageName")
    if not names:
        raise InputError(src, "no _rlnImageName column")
    n = len(names)
    if n_particles is not None:
        if not 2 <= n_particles <= n:
            raise InputError(src, f"--particles {n_particles}: the data set has {n} (need 2 to {n})")
        particles = {k: v[:n_particles] for k, v in particles.items()}
    data_dir = Path(os.path.abspath(src.parent))
    proj = Path(os.path.abspath(project))
    try:
        prefix = data_dir.relative_to(proj).as_posix()
    except ValueError:
        prefix = data_dir.as_posix()
    renamed = []
    for name in particles["rlnImageName"]:
        index, sep, stack = name.partition("@")
        if not sep:
            raise InputError(src, f"image name {name!r} is not N@STACK")
        if not os.path.isabs(stack):
            stack = f"{prefix}/{stack}" if prefix != "." else stack
        renamed.append(f"{index}@{stack}")
    particles["rlnImageName"] = renamed
    write_star_atomic(out, format_star({"optics": blocks["optics"], "particles": particles},
                                       loops={"optics", "particles"}, version=True))
    return out


def truth_fsc(map_path: Path, ground_truth: Path, mask: Path, pixel_size: float) -> dict[str, Any]:
    """FSC of a map against the ground truth, both times the soft mask
    (``credgui.metrics.truth.fsc_vs_truth``): the 0.143 and 0.5 crossings (A), the curve as
    [[resolution A, fsc], ...] and the masked real-space correlation."""
    from credgui.metrics.truth import fsc_vs_truth
    from credgui.relion.mrc import read_mrc

    truth = read_mrc(ground_truth)
    m = read_mrc(mask, expect_shape=truth.shape)
    rec = read_mrc(map_path, expect_shape=truth.shape)
    result = fsc_vs_truth(rec, truth, pixel_size, m)
    return {
        **result.summary(),
        "nyquist_angst": 2.0 * pixel_size,
        "map_truth_correlation_masked": result.correlation,
    }


def angular_errors(data_star: Path, true_poses: Path) -> dict[str, Any]:
    """Median and 90th-percentile angle (deg) between RELION's orientations in ``data_star`` and
    the simulated truth (``credgui.metrics.angles``: particles matched by image index and stack
    name; the demo's maps share the truth's frame: the refinement starts from its low-pass)."""
    from credgui.metrics.angles import angle_summary
    from credgui.metrics.angles import angular_errors as errors_of

    summary = angle_summary(errors_of(data_star, true_poses))
    return {
        "angular_error_median_deg": round(summary["median_deg"], 3),
        "angular_error_p90_deg": round(summary["p90_deg"], 3),
    }


def _fmt_a(value: float | None) -> str:
    return f"{value:.2f} A" if value is not None and math.isfinite(value) else "-"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _make_data(data_dir: Path) -> tuple[Any, float, bool]:
    """(manifest, seconds, reused): the demo data set in ``data_dir``, with a progress bar."""
    from credgui.simulate import iter_ensure_demo_dataset

    t0 = time.perf_counter()
    bar = ProgressBar(quiet=False)
    gen = iter_ensure_demo_dataset(data_dir)
    reused = False
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            manifest = stop.value
            break
        if p.stage == "done" and p.message.startswith("reusing"):
            reused = True
            continue
        bar(p)
    return manifest, time.perf_counter() - t0, reused


def _open_gui(job: Path) -> subprocess.Popen | None:
    """``credgui gui JOB`` in its own process (Qt stays out of this one; closing it does not
    stop the refinement)."""
    cmd = [sys.executable, "-m", "credgui.cli", "gui", str(job)]
    print(f"opening the GUI: {shlex.join(cmd)}", flush=True)
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)


def _iteration_line(it, elapsed: float | None) -> str:
    from credgui.commands.status import iteration_line, prior_check_of, warning_line

    check = prior_check_of(it)
    warning = warning_line(check)
    return f"{iteration_line(it, check)}  elapsed {format_duration(elapsed)}" + (f"\n{warning}" if warning else "")


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    from credgui.config import HookConfig
    from credgui.jobs import launch
    from credgui.jobs.watch import watch_job

    t_start = time.perf_counter()
    project = Path(os.path.abspath(args.dir))
    data_dir = Path(os.path.abspath(args.data)) if args.data else project / "data"
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if args.gui and not has_display:
        raise InputError(None, "--gui needs a display (DISPLAY is not set); run under X or xvfb-run")
    if args.gui is None:
        args.gui = has_display
    if args.max_iterations is not None and args.max_iterations < 1:
        raise InputError(None, f"--max-iterations {args.max_iterations}: must be at least 1")
    if any(c.isspace() for c in str(project)):
        raise InputError(project, "RELION cannot run in a folder whose path holds spaces: choose another --dir")
    load_start = _loadavg()

    # 1. data
    print(f"credgui demo: data set in {data_dir}", flush=True)
    manifest, data_s, reused = _make_data(data_dir)
    print(
        f"  {'reused' if reused else f'made in {data_s:.1f} s'}: {manifest.n_particles} particles of "
        f"{manifest.model_name} ({manifest.mass_kda:.0f} kDa), box {manifest.box} at {manifest.pixel_size:g} A/px, "
        f"SNR {manifest.snr_measured:.4g} (target {manifest.snr_target:g})",
        flush=True,
    )

    # 2. the refinement
    denoiser, weights, notice = choose_denoiser(args.denoiser)
    if notice:
        print(f"credgui demo: {notice}", flush=True)
    job = launch.next_job_dir(project, "Refine3D")
    try:
        particles = write_project_particles(manifest, project, job / PARTICLES_NAME, args.particles)
        params = launch.RefineParams(
            particles_star=particles,
            initial_model=manifest.initial_model,
            job_dir=job,
            particle_diameter=float(manifest.particle_diameter_angst),
            # --firstiter_cc: measured on the demo data (300 particles, iteration 1 from the 30 A
            # low-pass), median angular error 20 deg with it, 78 deg on absolute greyscale (and
            # 94 deg at SNR 1): an absolute-greyscale start never recovered (51 deg at iteration 6)
            absolute_greyscale=False,
            auto_iter_max=args.max_iterations,
            ground_truth=manifest.ground_truth,
            mask=manifest.mask,
            hook_config=HookConfig(denoiser=denoiser, weights=weights),
            **SAMPLING,
        )
        print(shlex.join(launch.local_command(params)), flush=True)
        handle = launch.launch_local(params)
    except BaseException:
        if job.is_dir() and not (job / launch.JOB_FILE).exists():
            for f in job.iterdir():
                f.unlink()
            job.rmdir()  # leave no half-made jobNNN behind
        raise
    print(f"credgui demo: started {job} (pid {handle.pid}); Ctrl-C stops it", flush=True)
    gui = _open_gui(job) if args.gui else None

    t_refine = time.perf_counter()
    t_launch = time.time()
    state = None
    done: set = set()
    interrupted = False
    try:
        for state in watch_job(job, poll_s=args.poll):
            handle.poll()
            for it in state.iterations:
                key = (it.number, it.final)
                if key not in done:
                    done.add(key)
                    print(_iteration_line(it, it.time - t_launch), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ncredgui demo: stopping RELION ...", flush=True)
        state = handle.stop()
        print(f"credgui demo: {job}: {state.status}", flush=True)
    refine_s = time.perf_counter() - t_refine
    if state is None:
        from credgui.jobs.watch import scan_job

        state = scan_job(job)

    # 3. summary
    final = next((i for i in state.iterations if i.final), None)
    its = [i for i in state.iterations if not i.final]
    summary: dict[str, Any] = {
        "status": "stopped" if interrupted else state.status,
        "error": state.error,
        "job_dir": str(job),
        "project_dir": str(project),
        "data_dir": str(data_dir),
        "data_reused": reused,
        "data_seconds": round(data_s, 2),
        "snr_target": manifest.snr_target,
        "snr_measured": manifest.snr_measured,
        "n_particles_data": manifest.n_particles,
        "n_particles_refined": args.particles or manifest.n_particles,
        "box": manifest.box,
        "pixel_size": manifest.pixel_size,
        "particle_diameter_angst": manifest.particle_diameter_angst,
        "denoiser": denoiser,
        "relion_command": list(launch.relion_command(params)),
        "mpi_procs": params.mpi_procs,
        "threads": params.threads,
        "iterations": its[-1].number if its else 0,
        "resolution_per_iteration": [[i.number, i.resolution if math.isfinite(i.resolution) else None] for i in its],
        "elapsed_per_iteration_s": [[i.number, round(i.time - t_launch, 1)] for i in state.iterations],
        "final_resolution_angst": final.resolution if final is not None and math.isfinite(final.resolution) else None,
        "refine_seconds": round(refine_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "cpu_count": os.cpu_count(),
        "final_map": str(final.map) if final is not None and final.map else None,
        "half_maps": [str(p) for p in final.half_maps] if final is not None else [],
        "ground_truth": str(manifest.ground_truth),
        "mask": str(manifest.mask),
    }
    if final is not None and final.map is not None and Path(final.map).is_file():
        summary.update(truth_fsc(Path(final.map), manifest.ground_truth, manifest.mask, manifest.pixel_size))
    last = state.iterations[-1] if state.iterations else None
    if last is not None and last.data_star is not None and last.number > 0:
        summary.update(angular_errors(last.data_star, manifest.true_poses_star))
    write_json_atomic(job / SUMMARY_NAME, summary, sort_keys=True, allow_nan=True)  # the GUI may read it at any moment

    print("", flush=True)
    print(f"credgui demo: {summary['status']} after {format_duration(refine_s)} of refinement "
          f"({summary['iterations']} iterations; load average {', '.join(map(str, summary['loadavg_end'] or []))})")
    if state.error:
        print(f"  error: {state.error}")
    if final is not None:
        print(f"  RELION's resolution (gold-standard FSC 0.143): {_fmt_a(summary['final_resolution_angst'])} "
              f"(Nyquist {2 * manifest.pixel_size:.2f} A)")
        if "fsc_truth_0143_angst" in summary:
            print(f"  FSC against the ground truth (soft mask): {_fmt_a(summary['fsc_truth_0143_angst'])} at 0.143, "
                  f"{_fmt_a(summary['fsc_truth_05_angst'])} at 0.5")
        if "angular_error_median_deg" in summary:
            print(f"  angular error against the true poses: median {summary['angular_error_median_deg']:.2f} deg, "
                  f"90% below {summary['angular_error_p90_deg']:.2f} deg")
        print(f"  final map: {summary['final_map']}")
        print(f"  half maps: {', '.join(summary['half_maps'])}")
    print(f"  summary: {job / SUMMARY_NAME}")
    print(f"  look at it: credgui gui {job}")
    if gui is not None and gui.poll() is None:
        print("  (the GUI stays open)")
    if interrupted:
        return 130
    return 0 if state.status == "finished" else 1
