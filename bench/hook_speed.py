"""Time ``credgui-reconstruct`` against ``relion_external_reconstruct`` on the same inputs.

Run by hand: ``.venv/bin/python bench/hook_speed.py [--boxes 64 96 256] [--repeats 3]``.
Writes ``bench/results/hook_speed.json``.

Inputs are synthetic but valid hook inputs (RELION 3.1's external-reconstruct STAR plus the
three (P, P, P//2+1) arrays, pad 2): the tau2/FSC spectra and the radial profile of K are those
of a real tiny RELION run (box 40, iteration 3) rescaled to the box; current size is the same
fraction of the box as in that run (30/40); B = K X + sqrt(K) noise with X the padded FT of a
map of random Gaussian blobs. Each program runs as a subprocess under ``/usr/bin/time -v``
(wall time and peak RSS of that process); the hook's own per-stage timings come from its
``credgui_hook.jsonl``. Denoisers: ``none`` (lambda = 0) and, when torch is installed, the
U-Net with random weights at lambda = 1 (through the in-process fallback unless a worker runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from credgui.relion.mrc import write_mrc_atomic
from credgui.relion.star import format_star

# tiny RELION run (box 40, pad 2, it003 half1): tau2 and FSC per shell 0..20, current size 30
_TINY_TAU2 = [0.024776, 0.135742, 0.123208, 0.068570, 4.252737e-04, 3.598504e-05, 1.229945e-05,
              1.288985e-05, 1.106230e-05, 4.368932e-06, 6.074372e-08, 2.817528e-06, 3.501272e-07,
              3.467725e-06, 4.720675e-06, 6.196363e-06, 0, 0, 0, 0, 0]
_TINY_FSC = [1, 1, 1, 1, 0.910647, 0.487718, 0.243108, 0.191438, 0.142494, 0.073709, -0.02571,
             0.036472, 0.004442, 0.039655, 0.050796, 0.043986, 0, 0, 0, 0, 0]
_TINY_CURRENT_FRACTION = 30 / 40


def make_inputs(directory: Path, box: int, pad: float = 2.0, seed: int = 0) -> Path:
    """Write ``run_it003_half1_class001_external_reconstruct.star`` and its arrays; return the STAR."""
    from credgui.recon.fourier import max_radius2, rfft_radius2

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    p = round(pad * box)
    current = 2 * round(_TINY_CURRENT_FRACTION * box / 2)
    # map of blobs in the centred box, zero-padded (origin at [0,0,0] after ifftshift)
    c = np.arange(box) - box // 2
    vol = np.zeros((box, box, box), np.float32)
    s2 = 2 * (box / 40) ** 2
    for _ in range(40):  # separable Gaussians: cheap at box 256
        z0, y0, x0 = rng.uniform(-box / 5, box / 5, 3)
        gz, gy, gx = (np.exp(-((c - v) ** 2) / s2).astype(np.float32) for v in (z0, y0, x0))
        vol += gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    from credgui.metrics.fft import rfftn_padded

    xf = rfftn_padded(vol, p) / np.float32(box**2)
    r2 = rfft_radius2(p)
    inside = r2 < max_radius2(current, pad)
    rel = np.sqrt(r2.astype(np.float32)) / p  # cycles per padded voxel, 0..~0.87
    weight = (5e4 * np.exp(-rel * 12) * (1 + 0.2 * rng.random(r2.shape, dtype=np.float32))).astype(np.float32)
    weight *= inside
    noise = (rng.standard_normal(r2.shape, dtype=np.float32) + 1j * rng.standard_normal(r2.shape, dtype=np.float32))
    data = (weight * xf + np.sqrt(weight) * noise * 0.05).astype(np.complex64) * inside
    del noise, xf, r2, rel
    # Hermitian symmetry of the kx = 0 plane, as RELION's arrays have
    idx = (-np.arange(p)) % p
    plane = data[:, :, 0]
    data[:, :, 0] = 0.5 * (plane + np.conj(plane[np.ix_(idx, idx)]))
    wplane = weight[:, :, 0]
    weight[:, :, 0] = 0.5 * (wplane + wplane[np.ix_(idx, idx)])
    root = directory / "run_it003_half1_class001_external_reconstruct"
    write_mrc_atomic(f"{root}_data_real.mrc", data.real)
    write_mrc_atomic(f"{root}_data_imag.mrc", data.imag)
    write_mrc_atomic(f"{root}_weight.mrc", weight)
    shells = np.arange(box // 2 + 1)
    src = np.linspace(0, 1, len(_TINY_TAU2))
    tau2 = np.interp(shells / (box // 2), src, _TINY_TAU2) * (box / 40) ** 3
    fsc = np.interp(shells / (box // 2), src, _TINY_FSC)
    tau2[shells > current // 2] = 0
    fsc[shells > current // 2] = 0
    blocks = {
        "external_reconstruct_general": {
            "rlnExtReconsDataReal": [f"{root}_data_real.mrc"],
            "rlnExtReconsDataImag": [f"{root}_data_imag.mrc"],
            "rlnExtReconsWeight": [f"{root}_weight.mrc"],
            "rlnExtReconsResult": [f"{root}.mrc"],
            "rlnTau2FudgeFactor": [1.0], "rlnPaddingFactor": [float(pad)],
            "rlnReferenceDimensionality": [3], "rlnOriginalImageSize": [box],
            "rlnCurrentImageSize": [current],
        },
        "external_reconstruct_tau2": {
            "rlnSpectralIndex": list(shells), "rlnReferenceTau2": [float(t) for t in tau2],
            "rlnGoldStandardFsc": [float(f) for f in fsc],
        },
    }
    star = Path(f"{root}.star")
    star.write_text(format_star(blocks, loops={"external_reconstruct_tau2"}))
    return star


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Wall time (s) and peak RSS (MiB) of one run of ``cmd`` (under /usr/bin/time -v)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"wall_s": wall, "peak_rss_mib": int(m.group(1)) / 1024 if m else None}


def summarise(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {"wall_s_median": float(np.median(walls)), "wall_s_min": float(min(walls)),
            "wall_s": walls, "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in runs)}


def bench_box(box: int, repeats: int, work: Path, unet: bool) -> dict:
    import mrcfile

    d = work / f"box{box}"
    star = make_inputs(d, box)
    hook = shutil.which("credgui-reconstruct", path=str(Path(sys.executable).parent)) or "credgui-reconstruct"
    text = star.read_text()
    relion_star = d / "relion_external_reconstruct.star"
    relion_star.write_text(text.replace("_external_reconstruct.mrc", "_relion.mrc")
                           .replace("run_it003_half1_class001_external_reconstruct.mrc", "relion_result.mrc"))
    out: dict = {"box": box, "padded": 2 * box, "current_size": None}
    from credgui.relion.protocol import read_call

    call = read_call(star)
    out["current_size"] = call.current_size
    relion_runs = [timed(["relion_external_reconstruct", str(relion_star), "--o", str(d / "relion_result.mrc")], d)
                   for _ in range(repeats)]
    env = dict(os.environ)
    (d / "credgui.toml").write_text('denoiser = "none"\npixel_size = 1.5\n')
    hook_runs = [timed([hook, str(star)], d, env) for _ in range(repeats)]
    out["relion"] = summarise(relion_runs)
    out["credgui_none"] = summarise(hook_runs)
    records = [json.loads(line) for line in (d / "credgui_hook.jsonl").read_text().splitlines()]
    out["credgui_none"]["stages_last"] = records[-1]["timings"]
    a = mrcfile.read(d / "relion_result.mrc")
    b = mrcfile.read(call.result)
    out["credgui_none"]["corr_vs_relion"] = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    out["credgui_none"]["rel_rms_vs_relion"] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    out["ratio_wall"] = out["credgui_none"]["wall_s_median"] / out["relion"]["wall_s_median"]
    out["extra_wall_s"] = out["credgui_none"]["wall_s_median"] - out["relion"]["wall_s_median"]
    out["ratio_rss"] = out["credgui_none"]["peak_rss_mib"] / out["relion"]["peak_rss_mib"]
    if unet:
        out.update(_bench_unet(d, star, hook, env, work, repeats, out["credgui_none"]["wall_s_median"]))
    return out


def _bench_unet(d: Path, star: Path, hook: str, env: dict[str, str], work: Path, repeats: int,
                wall_none: float) -> dict:
    """The U-Net (random weights, 1.5 A/voxel) at lambda = 1: in-process once (pays torch import
    and model load), then through a warm worker; plus the network's own inference time."""
    from credgui.denoise.worker import start_worker, stop_worker

    weights = work / "unet_random.pt"
    if not weights.exists():
        subprocess.run([sys.executable, "-c", (
            "import sys; from credgui.denoise.unet import UNet3D, save_model;"
            "save_model(sys.argv[1], UNet3D(), {'voxel_size': 1.5})"), str(weights)], check=True)
    base = (f'denoiser = "unet"\npixel_size = 1.5\nlambda_max = 1.0\nlambda_low_res = 1000.0\n'
            f'lambda_high_res = 999.0\nweights = "{weights}"\ndevice = "cpu"\n')
    res: dict = {}
    (d / "credgui.toml").write_text(base)
    run = timed([hook, str(star)], d, env)
    rec = json.loads((d / "credgui_hook.jsonl").read_text().splitlines()[-1])
    res["credgui_unet_inprocess"] = {**run, "stages": rec["timings"], "lambda": rec["lambda"], "worker": rec["worker"]}
    sock = work / "worker.sock"
    start_worker(sock, idle_timeout_s=600, device="cpu", wait_s=120)
    try:
        (d / "credgui.toml").write_text(base + f'worker_socket = "{sock}"\n')
        timed([hook, str(star)], d, env)  # the worker loads the model once
        runs = [timed([hook, str(star)], d, env) for _ in range(repeats)]
        rec = json.loads((d / "credgui_hook.jsonl").read_text().splitlines()[-1])
    finally:
        stop_worker(sock)
    res["credgui_unet_worker"] = {**summarise(runs), "stages_last": rec["timings"], "lambda": rec["lambda"],
                                  "worker": rec["worker"]}
    # the network's own inference time on this box, in this process (model already loaded)
    import time as _t

    from credgui.denoise.unet import load_unet_denoiser

    den = load_unet_denoiser(weights, device="cpu")
    vol = np.random.default_rng(0).standard_normal((d_box := _box_of(star),) * 3).astype(np.float32)
    den(vol)
    t0 = _t.perf_counter()
    den(vol)
    net = _t.perf_counter() - t0
    res["unet_inference_s"] = net
    # what the denoiser adds beyond its own inference: worker-served call - lambda-0 call - network
    res["unet_overhead_s"] = res["credgui_unet_worker"]["wall_s_median"] - wall_none - net
    res["unet_box"] = d_box
    return res


def _box_of(star: Path) -> int:
    from credgui.relion.protocol import read_call

    return read_call(star).ori_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 96, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unet", choices=("auto", "yes", "no"), default="auto")
    ap.add_argument("--merge", action="store_true", help="keep results of other boxes already in --out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hook_speed.json")
    args = ap.parse_args()
    unet = args.unet == "yes" or (args.unet == "auto" and _has_torch())
    results = []
    with tempfile.TemporaryDirectory(prefix="credgui_hook_speed_") as tmp:
        for box in args.boxes:
            res = bench_box(box, args.repeats, Path(tmp), unet and box <= 96)
            results.append(res)
            print(json.dumps({k: v for k, v in res.items()}, default=float))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and args.out.exists():  # keep earlier results for boxes not run now
        done = {r["box"] for r in results}
        results = [r for r in json.loads(args.out.read_text())["results"] if r["box"] not in done] + results
        results.sort(key=lambda r: r["box"])
    report = {"load_average_at_end": os.getloadavg(), "host": platform.node(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "numpy": np.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results}
    args.out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


if __name__ == "__main__":
    main()
