"""Simulated cryo-EM data sets from atomic models (the paper's forward model, plus a CTF).

Public API::

    simulate_dataset(model, out_dir, *, box=64, pixel_size=2.2, n_particles=1200, snr=0.15,
                     defocus_um=(0.2, 2.0), astigmatism_um=0.0, max_offset_px=0.0, seed=0,
                     force=False) -> Manifest
    iter_simulate_dataset(...same...) -> Iterator[Progress]      # returns the Manifest
    Manifest.load(directory) -> Manifest
    DEFAULT_STRUCTURE                                             # the bundled model (Path)
    DEMO_PARAMETERS                                               # the demo data set's settings
    ensure_demo_dataset(directory) -> Path                        # make once, reuse after
    iter_ensure_demo_dataset(directory) -> Iterator[Progress]     # the same, with progress

Lower levels: ``credgui.simulate.model`` (atomic model -> map), ``credgui.simulate.projection``
(Euler angles, CTF, Fourier-slice projector in RELION's conventions).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from credgui.errors import InputError
from credgui.progress import Progress
from credgui.resources import resource_path
from credgui.simulate.dataset import (
    DEFAULT_BOX,
    DEFAULT_DEFOCUS_UM,
    DEFAULT_PARTICLES,
    DEFAULT_PIXEL_SIZE,
    DEFAULT_SNR,
    FORMAT_VERSION,
    Manifest,
    file_sha256,
    iter_simulate_dataset,
    simulate_dataset,
)

__all__ = [
    "DEFAULT_STRUCTURE",
    "DEMO_PARAMETERS",
    "Manifest",
    "Progress",
    "ensure_demo_dataset",
    "iter_ensure_demo_dataset",
    "iter_simulate_dataset",
    "simulate_dataset",
    "DEFAULT_BOX",
    "DEFAULT_PIXEL_SIZE",
    "DEFAULT_PARTICLES",
    "DEFAULT_SNR",
    "DEFAULT_DEFOCUS_UM",
]

STRUCTURES_DIR = resource_path("structures")
DEFAULT_STRUCTURE = STRUCTURES_DIR / "DRD2_6CM4_target.pdbqt"
"""Dopamine D2 receptor-T4 lysozyme fusion (48 kDa, elongated), from DOCKSTRING (see its README)."""

DEMO_PARAMETERS = dict(
    box=DEFAULT_BOX,
    pixel_size=DEFAULT_PIXEL_SIZE,
    n_particles=DEFAULT_PARTICLES,
    snr=DEFAULT_SNR,
    defocus_um=DEFAULT_DEFOCUS_UM,
    astigmatism_um=0.0,
    max_offset_px=0.0,
    seed=0,
)
"""Settings of the demo data set (also the CLI's defaults): 1200 particles of a 48 kDa elongated
protein, box 64 at 2.2 A/px, SNR 0.15. Measured (plain RELION 3.1 auto-refine, 3 MPI ranks,
--healpix_order 2 --offset_range 5 --offset_step 2): converges in 14 iterations to 4.5 A (Nyquist
4.4 A), median angular error 1.6 deg, in about 10-11 min of CPU per worker, *provided*
``--auto_local_healpix_order 3``; with 4, iteration 6 alone is a global 3.75-degree search costing
over 18 CPU-minutes per worker."""

_DATASET_FILES = ("particles.star", "particles.mrcs", "true_poses.star", "ground_truth.mrc",
                  "initial_model.mrc", "mask.mrc", "manifest.json")


def _matches(directory: Path, model: Path, params: dict) -> bool:
    try:
        m = Manifest.load(directory)
    except InputError:
        return False
    if not all((directory / f).is_file() for f in _DATASET_FILES):
        return False
    return (
        m.format_version == FORMAT_VERSION
        and m.model_sha256 == file_sha256(model)
        and m.seed == params["seed"]
        and m.box == params["box"]
        and m.pixel_size == params["pixel_size"]
        and m.n_particles == params["n_particles"]
        and m.snr_target == params["snr"]
        and m.defocus_um == tuple(params["defocus_um"])
        and m.astigmatism_um == params["astigmatism_um"]
        and m.max_offset_px == params["max_offset_px"]
    )


def iter_ensure_demo_dataset(directory: str | Path) -> Iterator[Progress]:
    """Make the demo data set in ``directory`` unless a matching one is already there (then one
    ``done`` Progress). Returns the Manifest. Replaces an older credgui data set in ``directory``;
    refuses (InputError) a non-empty directory that is not one."""
    directory = Path(directory)
    if _matches(directory, DEFAULT_STRUCTURE, DEMO_PARAMETERS):
        manifest = Manifest.load(directory)
        yield Progress("simulate", "done", 1, 1, f"reusing {directory}", result=manifest)
        return manifest
    force = (directory / "manifest.json").is_file()
    manifest = yield from iter_simulate_dataset(DEFAULT_STRUCTURE, directory, force=force, **DEMO_PARAMETERS)
    return manifest


def ensure_demo_dataset(directory: str | Path) -> Path:
    """The demo data set's directory (``directory`` itself), made on first use and reused after."""
    gen = iter_ensure_demo_dataset(directory)
    for _ in gen:
        pass
    return Path(directory)
