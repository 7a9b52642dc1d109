"""Show a refinement job's state: one line per iteration.

Reads the job directory only (and the process or the Slurm job); works for jobs started by
credgui, by RELION's GUI or by hand.

Each iteration with a denoiser also shows the prior check (credgui.metrics.prior_check): how
many Fourier shells beyond the data's own FSC the two halves' denoised maps agree (`prior +N sh`).
It is a measurement, not yet a warning: on `credgui demo` (which does not overestimate) it reads
+5 to +12 shells at every lambda > 0 iteration, so no threshold on it is known to be reliable.

Examples:
  credgui status Refine3D/job012
  credgui status Refine3D/job012 --follow        # print new iterations until the job ends
"""

from __future__ import annotations

import argparse
import math

from credgui.errors import InputError
from credgui.jobs.watch import JobState, scan_job, watch_job
from credgui.metrics.prior_check import PriorCheck, prior_check_iteration
from credgui.progress import format_duration


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_dir", metavar="JOB_DIR", help="RELION job directory, e.g. Refine3D/job012")
    parser.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    parser.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between checks with --follow (2)")


def header_line(state: JobState) -> str:
    who = state.backend or "unknown backend"
    if state.job_id:
        who += f" {state.job_id}"
    if state.queue_state:
        who += f" {state.queue_state}"
    line = f"{state.job_dir}: {state.status} ({who}); elapsed {format_duration(state.elapsed_s)}"
    if state.status == "running":
        line += f", about {format_duration(state.remaining_s)} left"
    return line


def prior_check_of(it) -> PriorCheck | str | None:
    """The iteration's prior check, None without a denoiser, or a one-line reason it failed."""
    try:
        return prior_check_iteration(it)
    except (InputError, ValueError) as exc:
        return f"prior check: {exc}"


def warning_line(check: PriorCheck | str | None) -> str | None:
    """The line printed under an iteration whose prior check could not be made (no warning on
    the check's value yet: see the module docstring)."""
    return f"       warning: {check}" if isinstance(check, str) else None


def iteration_line(it, check: PriorCheck | str | None = None) -> str:
    """``it 003  res 12.40 A  step 3.75 deg  size 40/64 px  hook 2 ok  lambda 0.35  prior +0.4 sh``."""
    label = "final" if it.final else f"it {it.number:03d}"
    res = f"{it.resolution:6.2f} A" if math.isfinite(it.resolution) else "     - A"
    step = f"{it.angular_sampling:5.2f} deg" if it.angular_sampling else "    - deg"
    parts = [f"{label:<6}", f"res {res}", f"step {step}", f"size {it.current_size}/{it.box} px"]
    if it.hook_records:
        ok = sum(r.status == "ok" for r in it.hook_records)
        parts.append(f"hook {ok}/{len(it.hook_records)} ok")
        lambdas = [r.lambda_ for r in it.hook_records if r.lambda_ is not None]
        if lambdas:
            parts.append(f"lambda {max(lambdas):.2f}")
        total = [r.timings.get("total") for r in it.hook_records if r.timings.get("total") is not None]
        if total:
            parts.append(f"M-step {max(total):.1f} s")
    if isinstance(check, PriorCheck):
        parts.append(f"prior {check.shells_ahead:+.1f} sh")
    return "  ".join(parts)


def print_state(state: JobState, done: set | None = None, show_error: bool = True) -> None:
    for it in state.iterations:
        key = (it.number, it.final)
        if done is not None:
            if key in done:
                continue
            done.add(key)
        check = prior_check_of(it)
        print(iteration_line(it, check))
        if warning_line(check):
            print(warning_line(check))
    if show_error and state.error:
        print(f"error: {state.error}")


def main(args: argparse.Namespace) -> int:
    if not args.follow:
        state = scan_job(args.job_dir)
        print(header_line(state))
        print_state(state)
        return 1 if state.status == "failed" else 0
    done: set = set()
    last_header = None
    state = None
    for state in watch_job(args.job_dir, poll_s=args.poll):
        header = (state.status, state.queue_state)
        if header != last_header:
            print(header_line(state), flush=True)
            last_header = header
        print_state(state, done, show_error=False)
    if state is not None and state.error:
        print(f"error: {state.error}")
    return 1 if state is not None and state.status == "failed" else 0
