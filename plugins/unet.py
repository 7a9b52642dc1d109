"""The ``unet`` denoiser: the paper's 3D U-Net (Kimanius et al. 2021, section 3.1).

Options (``denoiser_options`` in credgui.toml, plus the hook's ``weights``/``device``):
``weights`` (path to a file written by ``credgui.denoise.unet.save_model``; default the
shipped ``resources/models/cwred_unet.pt``), ``device`` ("auto", "cpu", "cuda", "cuda:1"),
``threads`` (torch CPU threads), ``max_box`` (largest box inferred whole; larger is tiled),
``tile``, ``overlap`` (tiling, voxels).
"""

from __future__ import annotations

from typing import Any

NAME = "unet"

_KNOWN = ("weights", "device", "threads", "max_box", "tile", "overlap")


def create(options: dict[str, Any]):
    """Load the U-Net named by ``options``; ``InputError`` when no weights file can be used."""
    # torch is imported here, not at module level: the registry reads NAME without importing
    from credgui.denoise.unet import (
        DEFAULT_TILE,
        default_weights_path,
        load_unet_denoiser,
    )
    from credgui.errors import InputError

    unknown = sorted(set(options) - set(_KNOWN))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for denoiser 'unet'; known: {list(_KNOWN)}")
    weights = options.get("weights")
    if not weights:
        weights = default_weights_path()
        if not weights.is_file():
            raise InputError(
                weights,
                "no trained U-Net model is installed; train one (`credgui train`) and set "
                'weights = "/path/model.pt" in credgui.toml, or choose denoiser = "none"',
            )
    threads = options.get("threads")
    max_box = options.get("max_box")
    return load_unet_denoiser(
        weights,
        device=options.get("device") or "auto",
        threads=int(threads) if threads is not None else None,
        max_box=int(max_box) if max_box is not None else None,
        tile=int(options.get("tile", DEFAULT_TILE)),
        overlap=int(options["overlap"]) if options.get("overlap") is not None else None,
    )
