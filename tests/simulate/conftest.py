"""Fixtures of the simulate tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def write_pdb(tmp_path):
    def _write(text, name="model.pdb"):
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
