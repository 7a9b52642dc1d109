"""`credgui simulate`: arguments, one-line errors (exit 2), training-set layout."""

from __future__ import annotations

import json

import pytest

from credgui.cli import main
from credgui.simulate.model import model_stem

SMALL = ["--box", "40", "--pixel-size", "3.5", "--particles", "20", "--quiet"]


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "credgui simulate" in out and "--snr" in out and "--jobs" in out and "examples" in out


def test_one_data_set(tmp_path, demo_structure, capsys):
    out = tmp_path / "one"
    rc = main(["simulate", str(demo_structure), "-o", str(out), *SMALL, "--snr", "0.2", "--seed", "3",
               "--defocus", "0.5", "1.5", "--max-offset", "1"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert (m["n_particles"], m["box"], m["pixel_size"], m["snr_target"], m["seed"]) == (20, 40, 3.5, 0.2, 3)
    assert m["defocus_um"] == [0.5, 1.5] and m["max_offset_px"] == 1.0


def test_bad_input_exits_2_with_one_line(tmp_path, demo_structure, capsys):
    out = tmp_path / "bad"
    rc = main(["simulate", str(demo_structure), "-o", str(out), *SMALL, "--snr", "-0.1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("credgui simulate: error: ") and str(demo_structure) in err and "SNR" in err
    assert not out.exists()
    rc = main(["simulate", str(tmp_path / "nope.cif"), "-o", str(out), *SMALL])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope.cif" in err and "not found" in err and not out.exists()


def test_folder_of_models_and_several_snrs_in_parallel(tmp_path, demo_structure):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.pdbqt", "b.pdbqt"):
        (models / name).write_bytes(demo_structure.read_bytes())
    (models / "notes.txt").write_text("not a model")
    out = tmp_path / "train"
    rc = main(["simulate", str(models), "-o", str(out), *SMALL, "--snr", "0.1", "0.3", "--jobs", "2"])
    assert rc == 0
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["a_snr0.1", "a_snr0.3", "b_snr0.1", "b_snr0.3"]
    seeds = {json.loads((out / d / "manifest.json").read_text())["seed"] for d in dirs}
    assert seeds == {0, 1, 2, 3}
    snr = json.loads((out / "b_snr0.3" / "manifest.json").read_text())["snr_target"]
    assert snr == 0.3
    # existing outputs are not overwritten without --force
    assert main(["simulate", str(models), "-o", str(out), *SMALL, "--snr", "0.1", "0.3"]) == 2


def test_model_stem():
    assert model_stem("x/1abc.cif.gz") == "1abc" and model_stem("DRD2_target.pdbqt") == "DRD2_target"
