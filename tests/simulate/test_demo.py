"""The bundled structure and the demo data set (made once, reused after)."""

from __future__ import annotations

import pytest

import credgui.simulate as sim
from credgui.errors import InputError
from credgui.simulate.model import model_info


def test_bundled_structure_is_a_40_to_100_kDa_protein_that_fits_the_demo_box():
    assert sim.DEFAULT_STRUCTURE.is_file()
    assert sim.DEFAULT_STRUCTURE.stat().st_size < 1_000_000
    info = model_info(sim.DEFAULT_STRUCTURE)
    assert 40 <= info.mass_kda <= 100
    p = sim.DEMO_PARAMETERS
    assert info.max_radius + 10 < p["box"] * p["pixel_size"] / 2


@pytest.fixture
def small_demo(monkeypatch):
    monkeypatch.setitem(sim.DEMO_PARAMETERS, "box", 40)
    monkeypatch.setitem(sim.DEMO_PARAMETERS, "pixel_size", 3.5)
    monkeypatch.setitem(sim.DEMO_PARAMETERS, "n_particles", 30)


def test_demo_is_made_once_and_reused(tmp_path, small_demo):
    d = tmp_path / "demo"
    assert sim.ensure_demo_dataset(d) == d
    first = (d / "particles.mrcs").stat().st_mtime_ns
    steps = list(sim.iter_ensure_demo_dataset(d))
    assert [s.stage for s in steps] == ["done"] and steps[0].result.n_particles == 30
    assert (d / "particles.mrcs").stat().st_mtime_ns == first
    # other settings -> made again, in place
    sim.DEMO_PARAMETERS["n_particles"] = 31
    sim.ensure_demo_dataset(d)
    assert sim.Manifest.load(d).n_particles == 31


def test_demo_refuses_a_foreign_directory(tmp_path, small_demo):
    d = tmp_path / "demo"
    d.mkdir()
    (d / "thesis.tex").write_text("x")
    with pytest.raises(InputError):
        sim.ensure_demo_dataset(d)
    assert (d / "thesis.tex").exists()
