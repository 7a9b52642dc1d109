"""Atomic model -> ground-truth map: centring, axis order, cleaning, PDBQT types, B-factors."""

from __future__ import annotations

import numpy as np
import pytest

from credgui.simulate.model import (
    DEFAULT_B,
    model_info,
    model_to_map,
    pdbqt_to_pdb,
    prepare_model,
)
from tests.simulate._models import helix_pdb, pdb_line

BOX, PIX = 64, 2.2


@pytest.fixture(scope="module")
def demo_map(demo_structure):
    return model_to_map(demo_structure, BOX, PIX)


def test_map_is_centred_on_the_centre_of_mass(demo_map):
    vol, info = demo_map
    assert vol.shape == (BOX, BOX, BOX) and vol.dtype == np.float32
    w = vol.astype(np.float64)
    idx = np.indices(vol.shape)
    com = [(i * w).sum() / w.sum() for i in idx]  # (z, y, x)
    # potential weights differ a little from atomic masses: within 0.25 px of voxel N//2
    assert np.allclose(com, BOX // 2, atol=0.25), com
    assert info.n_atoms == 3368 and 40 < info.mass_kda < 60


@pytest.mark.parametrize("axis_xyz, axis_zyx", [(0, 2), (1, 1), (2, 0)])
def test_shifted_model_shifts_the_map_along_the_right_axis(demo_structure, demo_map, axis_xyz, axis_zyx):
    vol, _ = demo_map
    shift = np.zeros(3)
    shift[axis_xyz] = 3 * PIX  # +3 px along x, y or z
    moved, _ = model_to_map(demo_structure, BOX, PIX, shift_angst=tuple(shift))
    expected = np.roll(vol, 3, axis=axis_zyx)
    assert np.abs(moved - expected).max() < 1e-3 * np.abs(vol).max()
    # and not along another axis
    wrong = np.roll(vol, 3, axis=(axis_zyx + 1) % 3)
    assert np.abs(moved - wrong).max() > 0.1 * np.abs(vol).max()


def test_translating_the_file_coordinates_does_not_move_the_map(write_pdb):
    a, _ = model_to_map(write_pdb(helix_pdb(), "a.pdb"), 40, 1.5)
    moved = "\n".join(
        line[:30] + "".join(f"{float(line[30 + 8 * k:38 + 8 * k]) + d:8.3f}" for k, d in enumerate((17.0, -40.0, 5.5))) + line[54:]
        if line.startswith("ATOM") else line
        for line in helix_pdb().splitlines()
    )
    b, _ = model_to_map(write_pdb(moved, "b.pdb"), 40, 1.5)
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()


def test_density_is_where_the_atoms_are(demo_map):
    vol, _ = demo_map
    c = BOX // 2
    assert vol[c - 3 : c + 4, c - 3 : c + 4, c - 3 : c + 4].mean() > 0.1 * vol.max()
    assert np.abs(vol[:3]).max() < 0.05 * vol.max()  # solvent at the box edge (some Gibbs ringing)
    assert np.abs(vol[:3]).mean() < 0.002 * vol.max()


def test_waters_ligands_and_hydrogens_are_removed(write_pdb):
    extra = [
        pdb_line(900, "O", "HOH", "A", 101, (30.0, 0, 0), "O", record="HETATM"),
        pdb_line(901, "C1", "LIG", "A", 102, (0, 30.0, 0), "C", record="HETATM"),
        pdb_line(902, "ZN", "ZN", "A", 103, (0, 0, 30.0), "ZN", record="HETATM"),
    ]
    text = helix_pdb(extra=extra).replace("END\n", "") + pdb_line(903, "H", "ALA", "A", 1, (0, 0, 0), "H") + "\nEND\n"
    st, xyz, _, _ = prepare_model(write_pdb(text))
    assert len(xyz) == 12 * 5
    assert {r.name for ch in st[0] for r in ch} == {"ALA"}


def test_pdbqt_autodock_types_become_elements():
    line = "ATOM      1  N   GLU   199      12.742  -3.306  70.409  1.00  0.00    -0.411 {:<2}"
    text = "\n".join(line.format(t) for t in ("OA", "NA", "SA", "HD", "A", "C", "Zn"))
    pdb = pdbqt_to_pdb(text)
    elements = [row[76:78].strip() for row in pdb.splitlines() if row.startswith("ATOM")]
    assert elements == ["O", "N", "S", "H", "C", "C", "ZN"]


def test_bundled_pdbqt_reads_with_the_right_elements(demo_structure):
    st, xyz, masses, b_default = prepare_model(demo_structure)
    elements = {a.element.name for ch in st[0] for r in ch for a in r}
    assert elements == {"C", "N", "O", "S"}  # no Na from "NA", no H (removed)
    assert b_default == DEFAULT_B  # the file's B column is all 0


def test_plddt_b_column_is_replaced_but_crystal_b_factors_kept(write_pdb):
    # pLDDT: one value per residue, 0-100, high
    lines = helix_pdb(b=0.0).splitlines()
    plddt = [(f"{line[:60]}{90.0 - (int(line[22:26]) % 3):6.2f}{line[66:]}" if line.startswith("ATOM") else line) for line in lines]
    _, _, _, b_default = prepare_model(write_pdb("\n".join(plddt) + "\n", "plddt.pdb"))
    assert b_default == DEFAULT_B
    crystal = [(f"{line[:60]}{15.0 + int(line[6:11]) % 7:6.2f}{line[66:]}" if line.startswith("ATOM") else line) for line in lines]
    st, _, _, b_default = prepare_model(write_pdb("\n".join(crystal) + "\n", "xtal.pdb"))
    assert b_default is None
    assert {a.b_iso for ch in st[0] for r in ch for a in r} != {DEFAULT_B}


def test_model_info_reports_size(demo_structure):
    info = model_info(demo_structure)
    assert 50 < info.max_radius < 55 and info.compactness < 0.5
