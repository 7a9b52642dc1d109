"""Benchmark CW-RED against plain RELION on simulated data (the paper's Figs. 4-5 experiment).

  credgui benchmark run PLAN.toml -o DIR [--background]   simulate, refine every variant, one JSON per run
  credgui benchmark report DIR                            DIR/report/results.md + fig4_fsc.png + fig5_angles.png

A plan (see bench/paper_plan.toml) lists structures x SNRs x variants. Every variant of one
structure x SNR refines the same simulated data set (same seed) from the same 30 A initial model
with the same RELION parameters (including --random_seed). Variants: relion (no
--external_reconstruct), none (credgui's hook, RELION's Gaussian prior: must give relion's maps),
red (lambda = lambda_max at every iteration that has a nominal resolution), cwred (the default
confidence weighting).

`run` resumes: runs whose DIR/results/*.json is valid and finished are skipped; a corrupt JSON is
named in one line and the run done again; failed runs are retried (--skip-failed keeps them).
It prints one line per run state change and per iteration. --background detaches it (log in
DIR/benchmark.log, pid in DIR/benchmark.pid); Ctrl-C in the foreground stops the current RELION job.

examples:
  credgui benchmark run bench/paper_plan.toml -o bench_paper --background
  tail -f bench_paper/benchmark.log
  credgui benchmark report bench_paper
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from credgui.errors import InputError


def add_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run (or resume) a plan")
    run.add_argument("plan", type=Path, metavar="PLAN.toml")
    run.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="benchmark directory")
    run.add_argument("--background", action="store_true",
                     help="detach (nohup-like): log to DIR/benchmark.log, pid in DIR/benchmark.pid")
    run.add_argument("--skip-failed", action="store_true", help="do not retry runs recorded as failed")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    rep = sub.add_parser("report", help="tables and figures from a benchmark directory")
    rep.add_argument("dir", type=Path, metavar="DIR")
    rep.add_argument("--no-figures", action="store_true", help="markdown and JSON only")


def _background(args: argparse.Namespace) -> int:
    from credgui.bench.plan import load_plan
    from credgui.bench.runner import check_out_dir

    plan = load_plan(args.plan)  # errors now, in the foreground
    out = Path(os.path.abspath(args.out))
    check_out_dir(out, plan)
    cmd = [sys.executable, "-m", "credgui.cli", "benchmark", "run", os.path.abspath(args.plan), "-o", str(out)]
    if args.skip_failed:
        cmd.append("--skip-failed")
    if args.no_report:
        cmd.append("--no-report")
    log = out / "benchmark.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pid_file = out / "benchmark.pid"
    from credgui._io import write_text_atomic

    write_text_atomic(pid_file, f"{proc.pid}\n")
    print(f"credgui benchmark: running in the background (pid {proc.pid}); follow: tail -f {log}; "
          f"stop: kill -INT -- -{proc.pid}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from credgui.bench.plan import load_plan
    from credgui.bench.report import write_report
    from credgui.bench.runner import iter_benchmark

    if args.background:
        return _background(args)
    plan = load_plan(args.plan)
    gen = iter_benchmark(plan, args.out, retry_failed=not args.skip_failed, poll_s=args.poll)
    results = {}
    try:
        while True:
            ev = next(gen)
            print(ev.line(), flush=True)
    except StopIteration as stop:
        results = stop.value or {}
    finally:
        gen.close()
    if not args.no_report:
        rep = write_report(args.out)
        print(f"report: {rep['markdown']}" + "".join(f", {f}" for f in rep["figures"]), flush=True)
        for p in rep["problems"]:
            print(f"problem: {p}", flush=True)
    failed = [k for k, r in results.items() if r.get("status") != "finished"]
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from credgui.bench.report import write_report

    rep = write_report(args.dir, figures=not args.no_figures)
    for p in rep["problems"]:
        print(p, file=sys.stderr)
    print(rep["markdown"].read_text())
    if rep["figures"]:
        print("figures: " + ", ".join(str(f) for f in rep["figures"]))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _run(args)
    if args.action == "report":
        return _report(args)
    raise InputError(None, f"unknown action {args.action}")
