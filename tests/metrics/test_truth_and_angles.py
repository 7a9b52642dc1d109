"""FSC against the truth and angular errors against the true poses: one rule each, the same
numbers on the demo's, the benchmark's and the GUI's code paths.

The particle-matching rule is tested on image names as ``credgui demo`` writes them (its real
``write_project_particles``: ``000001@data/particles.mrcs``) and as the benchmark sees them
(project-relative stacks, other zero padding); the three paths are compared on one real RELION
refinement (``tiny_refine_job``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from credgui.errors import InputError
from credgui.metrics.angles import angular_errors, particle_key, read_poses
from credgui.relion.star import format_star, read_star, write_star_atomic


def _write_particles(path: Path, names, rot, tilt, psi) -> Path:
    block = {"rlnImageName": list(names), "rlnAngleRot": [f"{v:.6f}" for v in rot],
             "rlnAngleTilt": [f"{v:.6f}" for v in tilt], "rlnAnglePsi": [f"{v:.6f}" for v in psi]}
    write_star_atomic(path, format_star({"particles": block}, loops={"particles"}))
    return path


def test_particle_key_is_index_and_stack_name():
    assert particle_key("000012@data/particles.mrcs") == (12, "particles.mrcs")
    assert particle_key("12@particles.mrcs") == (12, "particles.mrcs")
    assert particle_key("3@/scratch/Data/stack_b.mrcs") == (3, "stack_b.mrcs")
    for bad in ("particles.mrcs", "x@particles.mrcs", ""):
        with pytest.raises(ValueError, match="N@STACK"):
            particle_key(bad)


def _demo_job(tmp_path: Path, manifest) -> tuple[Path, Path, np.ndarray]:
    """(RELION-like data STAR of a demo job, its true_poses.star, the known errors in its order):
    a demo project (the data set in DIR/data, the job's particle list rewritten by the demo's own
    ``write_project_particles``), orientations = the truth turned about psi by 3 deg (odd images)
    or 10 deg (even)."""
    import shutil

    from credgui.commands.demo import write_project_particles

    project = tmp_path / "credgui_demo"
    (project / "data").mkdir(parents=True)
    (project / "Refine3D" / "job001").mkdir(parents=True)
    for name in ("particles.star", "true_poses.star"):
        shutil.copy(Path(manifest.directory) / name, project / "data" / name)
    demo_star = write_project_particles(SimpleNamespace(particles_star=project / "data" / "particles.star"),
                                        project, project / "Refine3D" / "job001" / "demo_particles.star")
    names = read_star(demo_star)["particles"]["rlnImageName"]
    assert names[0] == "000001@data/particles.mrcs"  # as RELION's run_itNNN_data.star will carry them
    true_star = project / "data" / "true_poses.star"
    truth = read_star(true_star)["particles"]
    assert not set(names) & set(truth["rlnImageName"])  # the raw names never match (the GUI's old bug)
    poses = read_poses(true_star)
    turn = np.array([3.0 if particle_key(n)[0] % 2 else 10.0 for n in names])
    rows = np.array([poses[particle_key(n)] for n in names])
    refined = _write_particles(project / "Refine3D" / "job001" / "run_it003_data.star", names,
                               rows[:, 0], rows[:, 1], rows[:, 2] + turn)
    return refined, true_star, turn


def test_demo_job_image_names_match_the_true_poses(tmp_path, tiny_dataset):
    refined, true_star, turn = _demo_job(tmp_path, tiny_dataset)
    err = angular_errors(refined, true_star)
    assert err.size == turn.size == tiny_dataset.n_particles
    np.testing.assert_allclose(err, turn, atol=1e-4)


def test_the_angles_plot_reads_a_demo_job(tmp_path, tiny_dataset):
    """The GUI's Angles plot worker on a demo job (it found no particle before)."""
    pytest.importorskip("napari")
    pytest.importorskip("pyqtgraph")
    from credgui._qt.plots import angular_error_stats

    refined, true_star, turn = _demo_job(tmp_path, tiny_dataset)
    median, mean, n = angular_error_stats(refined, true_star)
    assert n == turn.size
    assert median == pytest.approx(np.median(turn), abs=1e-4) and mean == pytest.approx(turn.mean(), abs=1e-4)


def test_benchmark_names_and_several_stacks(tmp_path):
    rng = np.random.default_rng(5)
    rot, tilt, psi = rng.uniform(-180, 180, 6), rng.uniform(5, 175, 6), rng.uniform(-180, 180, 6)
    # two stacks, both numbered from 1: the stack name keeps them apart
    true_names = [f"{i:06d}@{s}.mrcs" for s in ("a", "b") for i in (1, 2, 3)]
    truth = _write_particles(tmp_path / "true.star", true_names, rot, tilt, psi)
    # the benchmark's refinement names stacks relative to its project, without zero padding, in another order
    order = [4, 0, 5, 2, 1, 3]
    ref_names = [f"{int(true_names[k].split('@')[0])}@Data/{true_names[k].split('@')[1]}" for k in order]
    offs = np.arange(1, 7, dtype=float)  # particle k is off by k+1 degrees about psi
    refined = _write_particles(tmp_path / "ref.star", ref_names, rot[order], tilt[order], psi[order] + offs[order])
    np.testing.assert_allclose(angular_errors(refined, truth), offs[order], atol=1e-4)
    assert set(read_poses(refined)) == set(read_poses(truth))


def test_fallback_to_the_index_for_one_renamed_stack_only(tmp_path):
    rot, tilt, psi = np.array([10.0, 20.0]), np.array([30.0, 40.0]), np.array([50.0, 60.0])
    truth = _write_particles(tmp_path / "true.star", ["1@particles.mrcs", "2@particles.mrcs"], rot, tilt, psi)
    renamed = _write_particles(tmp_path / "ren.star", ["000002@extracted.mrcs", "000001@extracted.mrcs"],
                               rot[::-1], tilt[::-1], psi[::-1] + 5.0)
    np.testing.assert_allclose(angular_errors(renamed, truth), [5.0, 5.0], atol=1e-4)
    # several stacks and no name in common: no guess, an error naming the file
    two = _write_particles(tmp_path / "two.star", ["1@x.mrcs", "2@y.mrcs"], rot, tilt, psi)
    with pytest.raises(InputError, match="two.star"):
        angular_errors(two, truth)


def test_a_star_without_angles_is_an_input_error(tmp_path):
    path = tmp_path / "noangles.star"
    write_star_atomic(path, format_star({"particles": {"rlnImageName": ["1@a.mrcs"]}}, loops={"particles"}))
    with pytest.raises(InputError, match="noangles.star.*rlnAngleRot"):
        read_poses(path)


@pytest.mark.relion
def test_demo_benchmark_and_gui_give_the_same_numbers(tmp_path, tiny_refine_job, tiny_dataset):
    """One real refinement, three code paths: ``credgui demo``'s summary, the benchmark's
    ``run_metrics`` and the GUI's maps worker and Angles plot."""
    pytest.importorskip("napari")
    pytest.importorskip("pyqtgraph")
    from credgui._qt.maps import MapRequest, load_maps
    from credgui._qt.plots import angular_error_stats
    from credgui.bench.metrics import run_metrics
    from credgui.commands import demo
    from credgui.relion.mrc import read_mrc, write_mrc_atomic

    m = tiny_dataset
    bench = run_metrics(tiny_refine_job, m)
    if bench["final_map"]:
        map_path = Path(bench["final_map"])
    else:  # stopped by --auto_iter_max: the benchmark averages the last half maps; so do we
        h1, h2 = (read_mrc(p) for p in bench["final_half_maps"])
        map_path = tmp_path / "average.mrc"
        write_mrc_atomic(map_path, 0.5 * (h1 + h2), m.pixel_size)
    summary = demo.truth_fsc(map_path, m.ground_truth, m.mask, m.pixel_size)
    gui = [x for x in load_maps(MapRequest(iteration=0, paths={"final_map": map_path, "ground_truth": m.ground_truth},
                                           mask=m.mask, pixel_size=m.pixel_size, want_surfaces=False))
           if x is not None][-1]
    assert not gui.errors and len(gui.truth_fsc) == 1
    tf = gui.truth_fsc[0]
    assert tf.masked
    for key, gui_value in (("fsc_truth_05_angst", tf.res_05), ("fsc_truth_0143_angst", tf.res_0143)):
        assert np.isfinite(bench[key]) and bench[key] > 2 * m.pixel_size
        assert summary[key] == pytest.approx(bench[key], rel=1e-9)
        assert gui_value == pytest.approx(bench[key], rel=1e-9)
    curve = np.array([f for _, f in bench["fsc_truth_curve"]])
    np.testing.assert_allclose([f for _, f in summary["fsc_truth_curve"]], curve)
    np.testing.assert_allclose(tf.fsc, curve, atol=1e-5)  # the curve stored rounded to 5 digits
    np.testing.assert_allclose(1.0 / tf.frequency, [r for r, _ in bench["fsc_truth_curve"]])

    star = Path(bench["data_star"])
    angles = demo.angular_errors(star, m.true_poses_star)
    median, mean, n = angular_error_stats(star, m.true_poses_star)
    b = bench["angular_error"]
    assert n == b["n"] == m.n_particles
    assert median == pytest.approx(b["median_deg"], rel=1e-12) and mean == pytest.approx(b["mean_deg"], rel=1e-12)
    assert angles["angular_error_median_deg"] == round(b["median_deg"], 3)
    assert angles["angular_error_p90_deg"] == round(b["p90_deg"], 3)
    assert 0 < b["median_deg"] < 90  # a refinement, not a random pairing (which gives ~126 deg)
