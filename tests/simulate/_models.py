"""Small atomic models written by the tests (PDB text)."""

from __future__ import annotations

import numpy as np


def pdb_line(serial, name, resname, chain, resseq, xyz, element, b=20.0, record="ATOM"):
    x, y, z = xyz
    return (
        f"{record:<6}{serial:>5} {name:<4} {resname:>3} {chain}{resseq:>4}    "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{b:6.2f}          {element:>2}"
    )


def helix_pdb(n_res=12, b=20.0, element_override=None, extra=()):
    """A poly-alanine-like strand along x (N, CA, C, O, CB per residue), ATOM records."""
    lines, serial = [], 1
    for r in range(n_res):
        base = np.array([3.8 * r, 2.0 * np.sin(r), 2.0 * np.cos(r)])
        for name, el, off in (("N", "N", (-1.2, 0.3, 0)), ("CA", "C", (0, 0, 0)), ("C", "C", (1.2, -0.3, 0)),
                              ("O", "O", (1.5, -1.4, 0.3)), ("CB", "C", (0, 1.0, 1.1))):
            e = element_override if (element_override and r == n_res // 2 and name == "CB") else el
            lines.append(pdb_line(serial, name, "ALA", "A", r + 1, base + np.array(off), e, b))
            serial += 1
    lines += list(extra)
    return "\n".join(lines + ["TER", "END"]) + "\n"
