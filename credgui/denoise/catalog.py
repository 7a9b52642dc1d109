"""The offline atomic models (shared docs/atomic-models.md) with their protein families.

Why families: the denoiser's validation must use structures whose family it never saw, or the
validation curve measures memory, not denoising. Families here are by fold/function (kinases,
nuclear-receptor ligand-binding domains, trypsin-like serine proteases incl. thrombin and factor
Xa, LDH/MDH, ...); a model with no known relative is its own family.

Sources (installed by their ordinary clients, nothing fetched at run time):
Debian ``theseus-examples`` (/usr/share/doc/theseus/examples), PyPI ``dockstring==0.3.4``
(resources/targets/*_target.pdbqt) and ``MDAnalysisTests==2.11.0`` (data/dssp/*.pdb.gz).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from credgui.denoise.groundtruth import ModelEntry

DOCKSTRING_FAMILIES: dict[str, str] = {
    **{
        k: "protein_kinase"
        for k in [
            "ABL1",
            "AKT1",
            "AKT2",
            "CDK2",
            "CSF1R",
            "EGFR",
            "FGFR1",
            "IGF1R",
            "JAK2",
            "KDR",
            "KIT",
            "LCK",
            "MAP2K1",
            "MAPK14",
            "MAPK1",
            "MAPKAPK2",
            "MET",
            "PLK1",
            "PTK2",
            "ROCK1",
            "SRC",
        ]
    },
    **{k: "gpcr_class_a" for k in ["ADORA2A", "ADRB1", "ADRB2", "DRD2", "DRD3"]},
    **{
        k: "nuclear_receptor_lbd"
        for k in [
            "AR",
            "ESR1",
            "ESR2",
            "NR3C1",
            "PGR",
            "PPARA",
            "PPARD",
            "PPARG",
            "THRB",
        ]
    },
    **{k: "cytochrome_p450" for k in ["CYP2C9", "CYP3A4"]},
    **{k: "trypsin_serine_protease" for k in ["F10", "F2"]},
    **{k: "aspartic_protease" for k in ["BACE1", "REN"]},
    **{k: "metzincin" for k in ["ADAM17", "MMP13"]},
}
"""dockstring targets with relatives among the offline models; the others are their own family."""

THESEUS_FAMILIES = {
    "ldh": "ldh_mdh",
    "trypsins": "trypsin_serine_protease",
    "cytochromes": "cytochrome_c",
}

DEFAULT_VALIDATION_FAMILIES = ("ldh_mdh", "nuclear_receptor_lbd", "gpcr_class_a")
"""Held out from training: a Rossmann-fold dehydrogenase, an all-helical LBD sandwich, a 7-TM bundle."""


def _find_dir(rel: str, extra_roots: Sequence[str | Path]) -> Path | None:
    for root in [*map(Path, extra_roots), *map(Path, sys.path)]:
        cand = root / rel
        if cand.is_dir():
            return cand
    return None


def offline_models(
    extra_roots: Sequence[str | Path] = (),
    theseus_dir: str | Path = "/usr/share/doc/theseus/examples",
    max_per_family: int = 12,
) -> list[ModelEntry]:
    """Every offline model found, with its family; at most ``max_per_family`` of the big theseus
    families (LDH: 227 chains, trypsins: 191), taken evenly from the sorted list so that one
    family does not swamp the others."""
    out: list[ModelEntry] = []
    ds = _find_dir("dockstring/resources/targets", extra_roots)
    if ds is not None:
        for p in sorted(ds.glob("*_target.pdbqt")):
            name = p.name.removesuffix("_target.pdbqt")
            out.append(
                ModelEntry(str(p), DOCKSTRING_FAMILIES.get(name, name.lower()), name)
            )
    md = _find_dir("MDAnalysisTests/data/dssp", extra_roots)
    if md is not None:
        for p in sorted(md.glob("*.pdb.gz")):
            stem = p.name.removesuffix(".pdb.gz")
            if "_" in stem or not stem[:1].isdigit():  # failing/broken test variants
                continue
            out.append(ModelEntry(str(p), f"pdb_{stem.lower()}", stem))
    th = Path(theseus_dir)
    if th.is_dir():
        for sub, fam in THESEUS_FAMILIES.items():
            files = sorted((th / sub).glob("*.pdb.gz"))
            if len(files) > max_per_family:
                step = len(files) / max_per_family
                files = [files[int(i * step)] for i in range(max_per_family)]
            out += [
                ModelEntry(str(p), fam, p.name.removesuffix(".pdb.gz")) for p in files
            ]
        for p in sorted(th.glob("*.pdb.gz")):
            if p.name.startswith("1s40"):  # an NMR ensemble with ssDNA
                continue
            out.append(ModelEntry(str(p), f"pdb_{p.name[:4].lower()}", p.name[:4]))
    return out


__all__ = ["DEFAULT_VALIDATION_FAMILIES", "DOCKSTRING_FAMILIES", "offline_models"]
