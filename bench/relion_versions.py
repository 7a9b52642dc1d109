"""The compatibility check with the RELION on PATH: a tiny CW-RED refinement, a continue and
the final map, through credgui's own launcher (what ``credgui refine`` does).

    PATH=/opt/relion-4.0/bin:$PATH PYTHONPATH=. .venv/bin/python bench/relion_versions.py --out DIR

1. A tiny simulated data set (box 40, 3.5 A/px, 200 particles, SNR 0.1) and a project in DIR.
2. ``launch_local`` with the shipped U-Net (CW-RED, lambda ramp 16 -> 5 A), ``--auto_iter_max 2``.
3. ``continue_job`` from iteration 2 to convergence: RELION 4.0/5.0 must get
   ``--external_reconstruct`` again (they parse it from the command line on --continue).
4. Checks: every iteration after the continue called the hook (credgui_hook.jsonl), the final
   map and half maps exist, the job is in RELION's pipeline (relion_pipeliner) as Succeeded.
Writes DIR/results.json and prints one line per check. Exit 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def relion_version() -> str:
    out = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True)
    return " ".join((out.stdout + out.stderr).split()[:4])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--particles", type=int, default=200)
    args = ap.parse_args()
    from credgui.config import HookConfig
    from credgui.jobs import continue_job, launch_local, next_job_dir
    from credgui.jobs.launch import RefineParams
    from credgui.relion import pipeline
    from credgui.relion.jobdir import read_hook_records
    from credgui.resources import resource_path
    from credgui.simulate import DEFAULT_STRUCTURE, simulate_dataset

    out = args.out
    if out.exists() and any(out.iterdir()):
        print(f"relion_versions.py: {out} is not empty; choose a new directory", file=sys.stderr)
        return 2
    project = out / "project"
    project.mkdir(parents=True)
    t0 = time.monotonic()
    manifest = simulate_dataset(DEFAULT_STRUCTURE, project / "data", box=40, pixel_size=3.5,
                                n_particles=args.particles, snr=0.1, seed=0)
    for name in ("particles.star", "particles.mrcs", "initial_model.mrc"):
        (project / name).symlink_to(project / "data" / name)
    params = RefineParams(
        particles_star=project / "particles.star", initial_model=project / "initial_model.mrc",
        job_dir=next_job_dir(project, "Refine3D"), particle_diameter=float(manifest.particle_diameter_angst),
        absolute_greyscale=True, offset_range=3.0, offset_step=2.0, healpix_order=1, auto_local_healpix_order=3,
        auto_iter_max=2,
        hook_config=HookConfig(denoiser="unet", weights=str(resource_path("models", "cwred_unet.pt"))),
    )
    first = launch_local(params).wait(timeout=3600)
    job = params.job_dir
    checks: dict[str, bool] = {"first run finished": first.status == "finished"}
    state = continue_job(job).wait(timeout=3600)
    records = read_hook_records(job)
    after = sorted({r.iteration for r in records if r.iteration is not None and r.iteration > 2})
    checks["continue finished"] = state.status == "finished"
    checks["hook called after the continue"] = bool(after)
    root = Path(state.last_iteration.root).name if state.last_iteration else "run"  # run_ctN after a continue
    finals = [f"{root}_class001.mrc", f"{root}_half1_class001_unfil.mrc", f"{root}_half2_class001_unfil.mrc"]
    checks["final map and half maps"] = all((job / n).is_file() for n in finals)
    procs = pipeline.processes(project)
    name = f"Refine3D/{job.name}/"
    checks["in RELION's pipeline, succeeded"] = procs.get(name) in ("2", "Succeeded")
    result = {
        "relion": relion_version(), "relion_refine": shutil.which("relion_refine_mpi"), "job": str(job),
        "iterations": [i.number for i in state.iterations], "hook_iterations_after_continue": after,
        "lambda": [r.lambda_ for r in records if r.lambda_ is not None][-4:],
        "pipeline_status": procs.get(name), "wall_s": round(time.monotonic() - t0, 1), "checks": checks,
        "error": state.error,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"{result['relion']}: {result['wall_s']} s, iterations {result['iterations']}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
