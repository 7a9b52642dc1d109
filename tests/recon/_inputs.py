"""Small synthetic hook inputs (RELION 3.1 external-reconstruct STAR + arrays) for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from credgui.recon.fourier import max_radius2, rfft_radius2
from credgui.relion.mrc import write_mrc_atomic
from credgui.relion.star import format_star

ROOT = "run_it004_half1_class001"


def blob_map(box: int, sigma: float, seed: int = 0, n_blobs: int = 6) -> np.ndarray:
    """Centred map of Gaussian blobs (z, y, x) float32, within a third of the box."""
    rng = np.random.default_rng(seed)
    c = np.arange(box) - box // 2
    vol = np.zeros((box, box, box), np.float64)
    for _ in range(n_blobs):
        z0, y0, x0 = rng.uniform(-box / 6, box / 6, 3)
        vol += (np.exp(-((c - z0) ** 2) / (2 * sigma**2))[:, None, None]
                * np.exp(-((c - y0) ** 2) / (2 * sigma**2))[None, :, None]
                * np.exp(-((c - x0) ** 2) / (2 * sigma**2))[None, None, :])
    return vol.astype(np.float32)


def make_arrays(box: int = 24, pad: float = 2.0, current: int | None = None, seed: int = 0,
                noise: float = 0.02, vol: np.ndarray | None = None, jitter: float = 0.2) -> dict:
    """B, K (rfft layout, (P, P, P//2+1)), tau2 and FSC per shell, of a blob map seen with noise.
    ``vol``: the map to use instead of random blobs; ``jitter``: random spread of K (0: K
    depends on the radius only, so a symmetric ``vol`` with ``noise = 0`` gives symmetric inputs)."""
    rng = np.random.default_rng(seed)
    current = current or box
    p = round(pad * box)
    vol = blob_map(box, sigma=box / 16, seed=seed) if vol is None else np.asarray(vol, np.float32)
    padded = np.zeros((p, p, p), np.float32)
    sel = (np.arange(box) - box // 2) % p
    padded[np.ix_(sel, sel, sel)] = vol
    xf = np.fft.rfftn(padded).astype(np.complex64) / box**2
    r2 = rfft_radius2(p)
    inside = r2 < max_radius2(current, pad)
    rel = np.sqrt(r2) / p
    weight = (1e3 * np.exp(-rel * 8) * (1 + jitter * rng.random(r2.shape))).astype(np.float32) * inside
    nz = rng.standard_normal(r2.shape) + 1j * rng.standard_normal(r2.shape)
    data = ((weight * xf) + np.sqrt(weight) * nz * noise).astype(np.complex64) * inside
    idx = (-np.arange(p)) % p
    data[:, :, 0] = 0.5 * (data[:, :, 0] + np.conj(data[:, :, 0][np.ix_(idx, idx)]))
    weight[:, :, 0] = 0.5 * (weight[:, :, 0] + weight[:, :, 0][np.ix_(idx, idx)])
    shells = np.arange(box // 2 + 1)
    fsc = np.clip(1.0 / (1.0 + np.exp((shells - box / 4) / 1.5)), 0, 1)
    fsc[shells > current // 2] = 0
    tau2 = np.where(shells <= current // 2, 1e-3 * np.exp(-shells / 3.0), 0.0)
    return {"data": data, "weight": weight, "tau2": tau2, "fsc": fsc, "box": box, "pad": pad,
            "current": current, "truth": vol}


def write_inputs(job: Path, arrays: dict, root: str = ROOT, fsc: np.ndarray | None = None) -> Path:
    """Write the STAR and arrays RELION would write into ``job``; returns the STAR path."""
    job.mkdir(parents=True, exist_ok=True)
    base = job / f"{root}_external_reconstruct"
    write_mrc_atomic(f"{base}_data_real.mrc", arrays["data"].real)
    write_mrc_atomic(f"{base}_data_imag.mrc", arrays["data"].imag)
    write_mrc_atomic(f"{base}_weight.mrc", arrays["weight"])
    fsc = arrays["fsc"] if fsc is None else fsc
    shells = np.arange(arrays["box"] // 2 + 1)
    blocks = {
        "external_reconstruct_general": {
            "rlnExtReconsDataReal": [f"{base}_data_real.mrc"],
            "rlnExtReconsDataImag": [f"{base}_data_imag.mrc"],
            "rlnExtReconsWeight": [f"{base}_weight.mrc"],
            "rlnExtReconsResult": [f"{base}.mrc"],
            "rlnTau2FudgeFactor": [1.0], "rlnPaddingFactor": [float(arrays["pad"])],
            "rlnReferenceDimensionality": [3], "rlnOriginalImageSize": [arrays["box"]],
            "rlnCurrentImageSize": [arrays["current"]],
        },
        "external_reconstruct_tau2": {
            "rlnSpectralIndex": [int(s) for s in shells],
            "rlnReferenceTau2": [float(t) for t in arrays["tau2"]],
            "rlnGoldStandardFsc": [float(f) for f in fsc],
        },
    }
    star = Path(f"{base}.star")
    star.write_text(format_star(blocks, loops={"external_reconstruct_tau2"}))
    return star
