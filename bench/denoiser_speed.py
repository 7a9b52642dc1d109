"""Denoiser speed: U-Net inference, warm-worker overhead, torch import cost, training throughput.

Run by hand (a few minutes on 2 CPU cores):

    .venv/bin/python bench/denoiser_speed.py                 # CPU (2 threads) + CUDA if present
    .venv/bin/python bench/denoiser_speed.py --boxes 64 96 128 200 --repeats 5

Writes bench/results/denoiser_speed-<host>-<UTC time>.json and prints it. Numbers:
- inference[device][box]: seconds per UNetDenoiser call (paper network, random weights:
  speed does not depend on the values), median of --repeats after one warm-up call;
  ``tiled`` says whether the box exceeded the whole-volume budget.
- worker: round trip of request_denoise minus the worker's own denoise time (framing,
  socket copies), median; ``hook_overhead_beyond_inference_s``: wall time of a fresh Python
  process that imports credgui.denoise.dispatch, asks the worker for the model's info and
  has one box-64 map denoised, minus the worker's inference time (all the hook pays for the
  denoiser beyond the network itself); against ``fresh_process_import_torch_s``, what the
  hook would pay for the torch import alone without the worker.
- training: seconds per step at box 64, batch 2, and maps per second (batch / step time).
- load_average: os.getloadavg() before and after: on a shared machine other processes take
  CPU time from the measurement, so compare numbers only at similar load.

Also writes bench/results/denoiser_speed.json (the latest run, the one the model card quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_inference(boxes: list[int], repeats: int, threads: int) -> dict:
    import torch

    from credgui.denoise.base import DenoiserInfo
    from credgui.denoise.unet import UNet3D, UNetDenoiser

    torch.manual_seed(0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: dict = {}
    for dev in devices:
        torch.set_num_threads(threads)
        den = UNetDenoiser(UNet3D().eval(), DenoiserInfo("unet"), device=dev)
        out[dev] = {"max_box": den.max_box}
        for box in boxes:
            x = np.random.default_rng(box).normal(size=(box, box, box)).astype(np.float32)

            def call(den=den, x=x, dev=dev) -> None:
                den(x)
                if dev == "cuda":
                    torch.cuda.synchronize()

            padded = -(-box // 32) * 32
            out[dev][str(box)] = {
                "seconds": _median_time(call, repeats),
                "tiled": padded > den.max_box,
            }
            print(f"inference {dev} box {box}: {out[dev][str(box)]}", flush=True)
    return out


def _fresh_python(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_worker(repeats: int, threads: int) -> dict:
    import torch

    from credgui.denoise import worker
    from credgui.denoise.unet import UNet3D, save_model

    with tempfile.TemporaryDirectory(prefix="credgui-bench-") as tmp:
        weights = save_model(Path(tmp) / "unet.pt", UNet3D().eval(), {"voxel_size": 1.5})
        sock = Path(tmp) / "w.sock"
        t0 = time.perf_counter()
        proc = worker.start_worker(sock, threads=threads, idle_timeout_s=120)
        start_s = time.perf_counter() - t0
        try:
            options = {"weights": str(weights), "device": "cpu"}
            t0 = time.perf_counter()
            worker.request_info(sock, "unet", options)
            load_s = time.perf_counter() - t0
            result: dict = {"start_s": start_s, "first_load_s": load_s}
            for box in (64, 96):
                x = np.random.default_rng(0).normal(size=(box, box, box)).astype(np.float32)
                header = {
                    "op": "denoise",
                    "name": "unet",
                    "options": options,
                    "shape": [box] * 3,
                    "dtype": "<f4",
                    "nbytes": x.nbytes,
                }
                overheads, totals = [], []
                for _ in range(repeats + 1):
                    t0 = time.perf_counter()
                    reply, _ = worker._exchange(
                        sock, header, memoryview(x).cast("B"), timeout_s=600
                    )
                    total = time.perf_counter() - t0
                    totals.append(total)
                    overheads.append(total - reply["seconds"]["denoise"])
                result[f"box{box}"] = {
                    "round_trip_s": statistics.median(totals[1:]),
                    "overhead_s": statistics.median(overheads[1:]),
                }
                print(f"worker box {box}: {result[f'box{box}']}", flush=True)
            # what a hook call pays when the worker answers: a fresh process that imports the
            # client, asks for the model's info, sends one box-64 map (as credgui.denoise.dispatch)
            client = (
                "import sys, numpy as np\n"
                "from credgui.denoise.dispatch import open_denoiser\n"
                f"d = open_denoiser('unet', {options!r}, socket_path={str(sock)!r})\n"
                "x = np.ones((64, 64, 64), np.float32) + np.arange(64, dtype=np.float32)\n"
                "y = d(x)\n"
                "assert d.used_worker and 'torch' not in sys.modules\n"
                "print(d.worker_seconds['denoise'])\n"
            )
            base = _fresh_python("pass", repeats)
            walls, beyond = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-c", client], check=True, cwd=ROOT, capture_output=True
                )
                walls.append(time.perf_counter() - t0)
                beyond.append(walls[-1] - float(done.stdout.split()[-1]))
            result["fresh_process_client_box64_s"] = statistics.median(walls)
            result["hook_overhead_beyond_inference_s"] = statistics.median(beyond)
            result["fresh_process_import_numpy_s"] = _fresh_python("import numpy", repeats) - base
            result["fresh_process_import_torch_s"] = _fresh_python("import torch", repeats) - base
            result["python_startup_s"] = base
            print(f"worker: {result}", flush=True)
        finally:
            worker.stop_worker(sock)
            proc.wait(timeout=30)
    _ = torch
    return result


def bench_training(steps: int, threads: int) -> dict:
    import torch

    from credgui.denoise.train import GaussianPairs, TrainConfig, train

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(80, 80, 80)).astype(np.float32)
    cfg = TrainConfig(steps=steps + 1, batch_size=2, box=64, checkpoint_every=10**9, device="cpu")
    data = GaussianPairs([gt], cfg)
    with tempfile.TemporaryDirectory(prefix="credgui-bench-") as tmp:
        t_data = _median_time(lambda: data.batch(0, 0, 2), 2)
        times = [p.result.seconds for p in train(cfg, data, tmp)][1:]
    result = {
        "box": 64,
        "batch_size": 2,
        "device": "cpu",
        "seconds_per_step": statistics.median(times),
        "maps_per_second": 2 / statistics.median(times),
        "data_seconds_per_batch": t_data,
    }
    print(f"training: {result}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["inference", "worker", "training"]
    )
    args = parser.parse_args()

    import torch

    report = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_before": list(os.getloadavg()),
    }
    if "inference" not in args.skip:
        report["inference"] = bench_inference(args.boxes, args.repeats, args.threads)
    if "worker" not in args.skip:
        report["worker"] = bench_worker(args.repeats, args.threads)
    if "training" not in args.skip:
        report["training"] = bench_training(args.train_steps, args.threads)
    report["load_average_after"] = list(os.getloadavg())
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"denoiser_speed-{platform.node()}-{stamp}.json"
    from credgui._io import write_json_atomic

    write_json_atomic(path, report, indent=2, allow_nan=True)
    write_json_atomic(out_dir / "denoiser_speed.json", report, indent=2, allow_nan=True)
    print(json.dumps(report, indent=2))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
