"""Atomic model -> electron-scattering potential map (gemmi ``DensityCalculatorE``).

The map is the ground truth of a simulated data set: the model's centre of mass sits on the box
centre voxel ``N//2`` in every axis, the array is in MRC order (z, y, x), and it is band-limited to
the box's Nyquist frequency (computed on a finer grid, then Fourier-cropped), so nothing aliases.

Traps handled here (see docs/atomic-models.md in the shared docs):
gemmi resizes the grid unless ``d_min == 0``; its array is indexed [x, y, z]; the grid is a periodic
P1 cell (so the model must fit inside the box with a margin); B-factors of 0 or pLDDT values in the
B column give aliased maps; PDBQT files hold AutoDock atom types, not elements, in that column.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from credgui.errors import InputError
from credgui.metrics.resample import resample_fourier

MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdbqt")
"""File name endings read as atomic models (each also with ``.gz``)."""

DEFAULT_B = 30.0
"""B-factor (A^2) given to every atom when the file's B column holds no usable B-factors."""

MARGIN_PX = 4
"""The model's largest radius must stay this many pixels inside half the box (periodic wrap)."""

FINE_PIXEL = 0.8
"""The map is computed on a grid at most this fine (A), then Fourier-cropped to the pixel size."""

# AutoDock 4 atom types (PDBQT columns 78-79) -> element symbols. NA is an acceptor nitrogen, not
# sodium; A is an aromatic carbon; G*, J, Q, Z are AutoDock's macrocycle/closure carbons.
AUTODOCK_TYPES = {
    "C": "C", "A": "C", "G": "C", "G0": "C", "G1": "C", "G2": "C", "G3": "C",
    "CG": "C", "CG0": "C", "CG1": "C", "J": "C", "Q": "C", "Z": "C",
    "N": "N", "NA": "N", "NS": "N",
    "O": "O", "OA": "O", "OS": "O",
    "S": "S", "SA": "S",
    "H": "H", "HD": "H", "HS": "H",
    "P": "P", "F": "F", "I": "I",
    "CL": "Cl", "Cl": "Cl", "BR": "Br", "Br": "Br",
    "MG": "Mg", "Mg": "Mg", "CA": "Ca", "Ca": "Ca", "MN": "Mn", "Mn": "Mn",
    "FE": "Fe", "Fe": "Fe", "ZN": "Zn", "Zn": "Zn", "CU": "Cu", "Cu": "Cu",
    "K": "K", "NI": "Ni", "Ni": "Ni", "CO": "Co", "Co": "Co",
}


@dataclass(frozen=True)
class ModelInfo:
    """What was simulated from an atomic model, after cleaning."""

    path: str
    n_atoms: int
    """heavy atoms of polymer residues (hydrogens, waters and ligands removed)"""
    mass_kda: float
    """mass of those atoms plus a hydrogen estimate (8 %), kDa"""
    b_factor_default: float | None
    """the B (A^2) given to all atoms when the file had none usable, else None"""
    max_radius: float
    """largest distance of an atom centre from the centre of mass, A"""
    compactness: float
    """smallest / largest principal-axis standard deviation (1 = sphere)"""


def find_models(path: str | Path) -> list[Path]:
    """The atomic model files under ``path``: the file itself, or the models in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _is_model_name(p.name))
        if not found:
            raise InputError(path, f"no atomic models ({', '.join(MODEL_SUFFIXES)}) in this folder")
        return found
    if not path.is_file():
        raise InputError(path, "atomic model file not found")
    return [path]


def _is_model_name(name: str) -> bool:
    name = name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(MODEL_SUFFIXES)


def model_stem(path: str | Path) -> str:
    """File name without model suffixes: ``1abc.cif.gz`` -> ``1abc``."""
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", errors="replace") as fh:
                return fh.read()
        return path.read_text(errors="replace")
    except FileNotFoundError:
        raise InputError(path, "atomic model file not found") from None
    except (OSError, EOFError) as exc:
        raise InputError(path, f"cannot read atomic model ({exc})") from None


def pdbqt_to_pdb(text: str, path: str | Path | None = None) -> str:
    """PDB text from PDBQT text: AutoDock types (columns 78-79) become elements (columns 77-78),
    the charge column is dropped. Raises InputError naming the line with an unknown type."""
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("ATOM", "HETATM")):
            adtype = line[76:80].strip() if len(line) > 76 else ""
            if not adtype:
                raise InputError(path, f"line {lineno}: PDBQT atom without an AutoDock type")
            element = AUTODOCK_TYPES.get(adtype) or AUTODOCK_TYPES.get(adtype.upper())
            if element is None:
                raise InputError(
                    path, f"line {lineno}: unknown AutoDock atom type {adtype!r} (no element known)"
                )
            out.append(f"{line[:66].ljust(66)}          {element.upper():>2}")
        elif line.startswith(("TER", "END", "MODEL", "ENDMDL", "CRYST1")):
            out.append(line)
    return "\n".join(out) + "\nEND\n"


def _check_pdb_coordinates(text: str, path: str | Path) -> None:
    """InputError naming the line when an ATOM/HETATM coordinate (columns 31-54) is not a
    number: gemmi reads ``ab.000`` as 0 and would put the atom at the origin silently."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("ATOM  ", "HETATM")):
            for axis, field in zip("xyz", (line[30:38], line[38:46], line[46:54])):
                try:
                    value = float(field)
                except ValueError:
                    raise InputError(path, f"line {lineno}: {axis} coordinate {field.strip()!r} is not a number") from None
                if not math.isfinite(value):
                    raise InputError(path, f"line {lineno}: {axis} coordinate {field.strip()!r} is not finite")


def read_structure(path: str | Path):
    """Read PDB, mmCIF or PDBQT (optionally gzipped) into a gemmi Structure, first model only.
    Raises InputError naming the file when it cannot be parsed or holds no atoms."""
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "atomic model file not found")
    name = path.name.lower().removesuffix(".gz")
    text = _read_text(path)
    if not name.endswith((".cif", ".mmcif")):
        _check_pdb_coordinates(text, path)
    try:
        if name.endswith(".pdbqt"):
            st = gemmi.read_pdb_string(pdbqt_to_pdb(text, path))
        elif name.endswith((".cif", ".mmcif")):
            st = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
        else:
            st = gemmi.read_pdb_string(text)
    except InputError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise InputError(path, f"not a readable atomic model ({str(exc).splitlines()[0][:120]})") from None
    if len(st) == 0 or not any(True for _ in st[0].all()):
        raise InputError(path, "the atomic model holds no atoms")
    while len(st) > 1:
        del st[1]
    return st


def clean_structure(st, path: str | Path):
    """Remove hydrogens, waters and ligands (ions and cofactors too), alternative conformations;
    raise InputError for unknown elements or when no polymer atoms are left. In place."""
    path = Path(path)
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    st.remove_alternative_conformations()
    st.remove_empty_chains()
    unknown = sorted({c.atom.element.name for c in st[0].all() if c.atom.element.atomic_number == 0})
    if unknown:
        first = next(cra for cra in st[0].all() if cra.atom.element.atomic_number == 0)
        raise InputError(
            path,
            f"unknown element {', '.join(repr(u) for u in unknown)} "
            f"(first at atom {first.atom.name!r} of {first.residue.name} {first.residue.seqid})",
        )
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(path, "no protein or nucleic-acid atoms left after removing ligands, waters and hydrogens")
    return st


def _b_factors_usable(b: np.ndarray, residue_index: np.ndarray) -> bool:
    """False when B is all zero (DOCKSTRING's PDBQT files), or looks like pLDDT (0-100, one value
    per residue, mostly high), as AlphaFold and ESMFold write it."""
    if not np.isfinite(b).all() or b.max() <= 0:
        return False
    if b.min() >= 0 and b.max() <= 100 and np.median(b) >= 50:
        # per-residue constant: every atom of a residue has its residue's first value
        first = np.full(residue_index.max() + 1, np.nan)
        first[residue_index[::-1]] = b[::-1]
        if np.allclose(b, first[residue_index]):
            return False
    return True


def prepare_model(path: str | Path):
    """Read and clean a model; set B-factors when the file has none usable.

    Returns ``(structure, xyz (n,3) A, masses (n,), b_default or None)``.
    """
    st = clean_structure(read_structure(path), path)
    atoms = []
    residue_index = []
    for ri, res in enumerate(r for ch in st[0] for r in ch):
        for atom in res:
            atoms.append(atom)
            residue_index.append(ri)
    b = np.array([a.b_iso for a in atoms], dtype=float)
    b_default = None
    if not _b_factors_usable(b, np.asarray(residue_index)):
        b_default = DEFAULT_B
        for a in atoms:
            a.b_iso = DEFAULT_B
            a.aniso = type(a.aniso)(0, 0, 0, 0, 0, 0)  # drop anisotropic U (would override b_iso)
    xyz = np.array([a.pos.tolist() for a in atoms], dtype=float)
    masses = np.array([a.element.weight for a in atoms], dtype=float)
    return st, xyz, masses, b_default


def model_info(path: str | Path) -> ModelInfo:
    """Mass and size of a model after cleaning (no map computed)."""
    _, xyz, masses, b_default = prepare_model(path)
    return _info(path, xyz, masses, b_default)


def _info(path, xyz: np.ndarray, masses: np.ndarray, b_default) -> ModelInfo:
    com = (xyz * masses[:, None]).sum(0) / masses.sum()
    d = xyz - com
    radius = float(np.sqrt((d**2).sum(1)).max())
    if len(xyz) >= 4:
        ev = np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(d.T)), 0, None))
        compact = float(ev[0] / ev[2]) if ev[2] > 0 else 1.0
    else:
        compact = 1.0
    return ModelInfo(
        path=str(path),
        n_atoms=int(len(xyz)),
        mass_kda=float(masses.sum() * 1.08 / 1000.0),
        b_factor_default=b_default,
        max_radius=radius,
        compactness=compact,
    )


def check_fits(info: ModelInfo, box: int, pixel_size: float) -> None:
    """InputError naming the model when it does not fit the box (periodic wrap-round)."""
    available = (box / 2 - MARGIN_PX) * pixel_size
    if info.max_radius > available:
        need = math.ceil(2 * (info.max_radius / pixel_size + MARGIN_PX))
        raise InputError(
            info.path,
            f"model too large for the box: largest radius {info.max_radius:.1f} A > {available:.1f} A "
            f"(half of a {box} px box at {pixel_size:g} A/px less a {MARGIN_PX} px margin); "
            f"use --box {need + need % 2} or a larger --pixel-size",
        )


def model_to_map(
    path: str | Path,
    box: int,
    pixel_size: float,
    *,
    blur: float = 0.0,
    shift_angst: tuple[float, float, float] = (0.0, 0.0, 0.0),
    rotation: np.ndarray | None = None,
) -> tuple[np.ndarray, ModelInfo]:
    """Potential map of the model in a ``box``^3 grid at ``pixel_size`` A, MRC order (z, y, x),
    float32, centre of mass of the atoms at voxel (N//2, N//2, N//2).

    Computed by gemmi at a pixel size <= ``FINE_PIXEL`` (an integer fraction of ``pixel_size``),
    then Fourier-cropped to ``box`` so the map is band-limited to Nyquist. ``blur`` is an extra
    B-factor (A^2) added to all atoms; ``shift_angst`` = (x, y, z) moves the model off centre by
    that much after centring (the fit check includes it); ``rotation`` (3x3) turns the atoms about
    their centre of mass first (the denoiser's ground-truth library). Raises InputError (naming the file) for unreadable, empty
    or too large models and unknown elements.
    """
    import gemmi

    st, xyz, masses, b_default = prepare_model(path)
    info = _info(path, xyz, masses, b_default)
    shift_vec = np.asarray(shift_angst, dtype=float)
    check_fits(dataclasses.replace(info, max_radius=info.max_radius + float(np.linalg.norm(shift_vec))),
               box, pixel_size)

    over = max(1, math.ceil(pixel_size / FINE_PIXEL - 1e-9))
    n_fine = box * over
    length = box * pixel_size
    com = (xyz * masses[:, None]).sum(0) / masses.sum()
    centre = np.full(3, (box // 2) * pixel_size)
    shift = gemmi.Position(*(centre - com + shift_vec))
    rot = None if rotation is None else np.asarray(rotation, dtype=float)
    for ch in st[0]:
        for res in ch:
            for atom in res:
                if rot is None:
                    atom.pos = atom.pos + shift
                else:
                    atom.pos = gemmi.Position(*(rot @ (np.array(atom.pos.tolist()) - com) + centre + shift_vec))

    dc = gemmi.DensityCalculatorE()
    dc.d_min = 0  # keep our grid size
    dc.blur = float(blur)
    dc.grid.set_unit_cell(gemmi.UnitCell(length, length, length, 90, 90, 90))
    dc.grid.spacegroup = gemmi.find_spacegroup_by_name("P1")
    dc.grid.set_size(n_fine, n_fine, n_fine)
    st.cell = dc.grid.unit_cell
    st.spacegroup_hm = "P 1"
    dc.put_model_density_on_grid(st[0])
    fine = np.array(dc.grid, copy=True)  # [x, y, z]
    if fine.shape != (n_fine,) * 3:
        raise RuntimeError(f"gemmi resized the grid to {fine.shape}")
    fine = np.ascontiguousarray(fine.transpose(2, 1, 0), dtype=np.float64)  # -> [z, y, x]
    # fine voxel i sits at i * pixel_size / over; the box centre voxel N//2 is fine voxel over*(N//2)
    # origin at voxel 0 on both grids: fine voxel over*k is box voxel k (credgui.metrics.resample)
    vol = resample_fourier(fine, box, centred=False) if over > 1 else fine
    return vol.astype(np.float32), info

