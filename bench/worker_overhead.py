"""Per-call cost of the hook with the shipped U-Net, in-process vs. a warm worker.

    PYTHONPATH=. .venv/bin/python bench/worker_overhead.py [--box 64] [--calls 3]

Writes a synthetic RELION external-reconstruct call (box N, pad 2) into a temporary job, runs
``credgui-reconstruct`` on it as RELION does (a subprocess), ``--calls`` times without a worker
and ``--calls`` times with a warm ``credgui worker`` on the job's socket, and prints, per call:
the hook's wall time, its ``denoise`` stage, and for the worker calls the worker's own network
time (``worker_seconds.denoise``); "overhead" = hook wall time - network time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    from credgui.denoise import worker
    from credgui.jobs.launch import hook_executable
    from tests.recon._inputs import make_arrays, write_inputs

    tmp = Path(tempfile.mkdtemp(prefix="cgwo"))
    job = tmp / "Refine3D" / "job001"
    star = write_inputs(job, make_arrays(box=args.box, pad=2.0))
    sock = job / "credgui_worker.sock"
    (job / "credgui.toml").write_text(
        'denoiser = "unet"\nweights = "credgui:models/cwred_unet.pt"\npixel_size = 2.2\nkeep_inputs = true\n'
        f'lambda_low_res = 100.0\nlambda_high_res = 50.0\nworker_socket = "{sock}"\n')
    hook = hook_executable()
    rows = []

    def call(label: str) -> None:
        t0 = time.perf_counter()
        out = subprocess.run([hook, str(star)], cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        rec = json.loads((job / "credgui_hook.jsonl").read_text().splitlines()[-1])
        net = (rec.get("worker_seconds") or {}).get("denoise")
        rows.append((label, wall, rec["timings"]["denoise"], net, rec["worker"]))

    for _ in range(args.calls):
        call("in-process")
    t0 = time.perf_counter()
    proc = worker.start_worker(sock, device="cpu", wait_s=120)
    start_s = time.perf_counter() - t0
    try:
        for _ in range(args.calls):
            call("warm worker")
    finally:
        worker.stop_worker(sock)
        proc.wait(timeout=30)
    print(f"box {args.box}, pad 2; worker start (until it answers) {start_s:.2f} s")
    print("| call | hook wall (s) | denoise stage (s) | network in worker (s) | overhead beyond network (s) |")
    print("|---|---|---|---|---|")
    for label, wall, den, net, used in rows:
        over = f"{wall - net:.2f}" if net is not None else "-"
        print(f"| {label}{'' if used or label == 'in-process' else ' (fell back)'} | {wall:.2f} | {den:.2f} | "
              f"{net if net is None else round(net, 2)} | {over} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
