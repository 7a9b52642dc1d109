"""credgui's jobs in RELION's pipeline (credgui.relion.pipeline), with real RELION 3.1 jobs
around them: RELION's own relion_pipeliner runs an Import job before and a PostProcess job
after a credgui refinement. Marked ``relion``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from credgui.errors import InputError
from credgui.jobs import launch_local
from credgui.relion import pipeline
from credgui.relion.star import read_star
from tests.fixtures.relion import make_project, relion_missing, tiny_params

pytestmark = pytest.mark.relion


@pytest.fixture(autouse=True)
def _need_relion():
    reason = relion_missing() or (None if shutil.which("relion_pipeliner") else "relion_pipeliner missing")
    if reason:
        pytest.skip(reason)


def _pipeliner(project: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(["relion_pipeliner", *args], cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def _edges(project: Path, block: str) -> set[tuple[str, str]]:
    table = read_star(project / "default_pipeline.star").get(block, {})
    keys = list(table)
    return set(zip(table[keys[0]], table[keys[1]])) if keys else set()


def test_credgui_job_is_a_relion_pipeline_job_and_postprocess_takes_its_half_maps(tmp_path, tiny_dataset):
    project = make_project(tmp_path / "project", tiny_dataset, n_particles=100)
    # a RELION job first, run by RELION's own pipeliner: Import/job001 of the mask (3.1.3's
    # --addJob cannot make a MaskCreate job: addScheduledJob leaves its type unset)
    (project / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter                       1\n \n")
    _pipeliner(project, "--addJob", "Import", "--addJobOptions",
               "do_raw == No;do_other == Yes;fn_in_other == mask.mrc;node_type == 3D mask (.mrc)")
    _pipeliner(project, "--RunJobs", "Import/job001/", "--sec_wait_after", "1")
    mask = project / "Import" / "job001" / "mask.mrc"
    assert mask.is_file()
    mask_stat = mask.stat()
    relion_job = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in mask.parent.iterdir()}

    # run to convergence (RELION writes the unfiltered half maps only then): coarse sampling
    params = tiny_params(project, tiny_dataset, auto_iter_max=None, healpix_order=1, auto_local_healpix_order=2,
                         solvent_mask=mask)
    assert params.job_dir.name == "job002"
    handle = launch_local(params)
    name = "Refine3D/job002/"
    procs = pipeline.processes(project)
    assert procs[name] == "0"  # Running, in RELION 3.1's numbers
    assert pipeline.job_counter(project) == 3  # RELION's next job is job003
    job = params.job_dir
    assert (job / "job.star").is_file() and (job / "job_pipeline.star").is_file()
    opts = read_star(job / "job.star")["joboptions_values"]
    values = dict(zip(opts["rlnJobOptionVariable"], opts["rlnJobOptionValue"]))
    assert values["fn_img"] == "particles.star" and values["fn_mask"] == "Import/job001/mask.mrc"
    assert values["other_args"] == "--external_reconstruct"
    note = (job / "note.txt").read_text()
    assert "++++ with the following command(s):" in note and "relion_refine_mpi" in note
    assert ("Import/job001/mask.mrc", name) in _edges(project, "pipeline_input_edges")
    assert not (project / ".relion_lock").exists()

    state = handle.wait(timeout=900)
    assert state.status == "finished", (state.error, state.log_tail)
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()  # kept for RELION
    # credgui's launcher ran RELION's check: Succeeded (2), its output nodes touched in .Nodes
    assert pipeline.processes(project)[name] == "2"
    assert (project / ".Nodes" / "10" / "Refine3D" / "job002" / "run_half1_class001_unfil.mrc").exists()

    assert (job / "run_half1_class001_unfil.mrc").is_file() and (job / "run_half2_class001_unfil.mrc").is_file()
    # RELION's PostProcess takes the half maps through the pipeline, as job003
    _pipeliner(project, "--addJob", "PostProcess", "--addJobOptions",
               f"fn_in == {name}run_half1_class001_unfil.mrc;fn_mask == Import/job001/mask.mrc;"
               f"angpix == {tiny_dataset.pixel_size}")
    _pipeliner(project, "--RunJobs", "PostProcess/job003/", "--sec_wait_after", "1")
    assert (project / "PostProcess" / "job003" / "postprocess.mrc").is_file()
    half = f"{name}run_half1_class001_unfil.mrc"
    assert (half, "PostProcess/job003/") in _edges(project, "pipeline_input_edges")
    assert (name, half) in _edges(project, "pipeline_output_edges")
    procs = pipeline.processes(project)
    assert procs["Import/job001/"] == "2" and procs["PostProcess/job003/"] == "2" and procs[name] == "2"
    # nothing of RELION's job was touched
    assert mask.stat().st_mtime_ns == mask_stat.st_mtime_ns
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in mask.parent.iterdir()} == relion_job
    assert pipeline.job_counter(project) == 4


def test_registration_refuses_a_job_number_relion_already_handed_out(tmp_path):
    project = tmp_path / "p"
    (project / "Refine3D" / "job002").mkdir(parents=True)
    (project / "default_pipeline.star").write_text(
        "\ndata_pipeline_general\n\n_rlnPipeLineJobCounter                       5\n \n")
    with pytest.raises(InputError, match=r"default_pipeline.star: RELION's job counter is at 5: job 2 may be RELION's"):
        pipeline.register_job(project / "Refine3D" / "job002", {"fn_img": "x.star"}, ["relion_refine_mpi"])
    assert pipeline.job_counter(project) == 5 and not (project / ".relion_lock").exists()


def test_registration_skips_directories_beyond_the_counter(tmp_path):
    """A job directory made beyond RELION's counter: the counter moves to it first, so RELION's
    own --addJob makes exactly that job and RELION's next one comes after."""
    project = tmp_path / "p"
    job = project / "Refine3D" / "job007"
    job.mkdir(parents=True)
    (project / "particles.star").write_text("")
    (project / "ref.mrc").write_text("")
    (project / "default_pipeline.star").write_text(
        "\ndata_pipeline_general\n\n_rlnPipeLineJobCounter                       3\n \n")
    info = pipeline.register_job(job, {"fn_img": "particles.star", "fn_ref": "ref.mrc", "no_such_option": "1"},
                                 ["relion_refine_mpi", "--o", "Refine3D/job007/run"])
    assert info["process"] == "Refine3D/job007/" and info["counter"] == 8
    assert pipeline.processes(project) == {"Refine3D/job007/": "0"}


def test_a_continued_job_gets_its_run_ct_maps_as_relion_output_nodes(tmp_path):
    """RELION's GUI names a continue's outputs run_ctN_*; credgui lists them in
    RELION_OUTPUT_NODES.star and RELION's own --check_job_completion takes them."""
    project = tmp_path / "p"
    job = project / "Refine3D" / "job001"
    job.mkdir(parents=True)
    (project / "particles.star").write_text("")
    (project / "ref.mrc").write_text("")
    pipeline.register_job(job, {"fn_img": "particles.star", "fn_ref": "ref.mrc"}, ["relion_refine_mpi"])
    pipeline.add_refine_output_nodes(job, "run_ct3")
    for name in ("run_ct3_data.star", "run_ct3_half1_class001_unfil.mrc", "run_ct3_class001.mrc"):
        (job / name).write_text("")
    (job / "RELION_JOB_EXIT_SUCCESS").touch()
    assert pipeline.check_completion(project)
    assert pipeline.processes(project)["Refine3D/job001/"] == "2"
    outputs = _edges(project, "pipeline_output_edges")
    assert ("Refine3D/job001/", "Refine3D/job001/run_ct3_half1_class001_unfil.mrc") in outputs
    assert ("Refine3D/job001/", "Refine3D/job001/run_ct3_class001.mrc") in outputs
    nodes = read_star(project / "default_pipeline.star")["pipeline_nodes"]
    types = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeType"]))
    assert str(types["Refine3D/job001/run_ct3_half1_class001_unfil.mrc"]) == "10"  # a half map
