"""The job record ``credgui_job.json`` (credgui.jobs.jobfile): round trip, refusal at the door."""

from __future__ import annotations

import json
import os

import pytest

from credgui.errors import InputError
from credgui.jobs.jobfile import JOB_FILE, JobRecord, new_record, project_dir_of, read_job_file, write_job_file


def _job(tmp_path):
    job = tmp_path / "proj" / "Refine3D" / "job007"
    job.mkdir(parents=True)
    (job / "run.out").write_text("twelve bytes")
    return job


def test_a_record_round_trips_through_the_file_and_keeps_fields_it_does_not_know(tmp_path):
    job = _job(tmp_path)
    record = new_record(
        job, "local", command=("mpirun", "-n", "3", "relion_refine_mpi"), workers=(("/tmp/s.sock", "cuda:0"),),
        pid=4242, pgid=4242, sid=4242, job_id="4242", params={"symmetry": "C1", "auto_iter_max": 3},
        pipeline={"pipeliner": "relion_pipeliner", "process": "Refine3D/job007/", "counter": 8},
        history=({"backend": "slurm", "job_id": "17"},), extra={"written_by_a_newer_credgui": [1, 2]},
    )
    path = write_job_file(job, record)
    assert path == job / JOB_FILE and sorted(os.listdir(job)) == [JOB_FILE, "run.out"]  # no temp file left
    back = read_job_file(job)
    assert back == record and back.extra == {"written_by_a_newer_credgui": [1, 2]}
    assert back.project_dir == str(tmp_path / "proj") and back.output_root == "Refine3D/job007/run"
    assert back.log_offsets == {"run.out": 12, "run.err": 0, "credgui_hook.jsonl": 0}
    data = json.loads(path.read_text())  # what RELION-side tools and older readers see
    assert data["workers"] == [["/tmp/s.sock", "cuda:0"]] and data["pid"] == 4242
    assert data["written_by_a_newer_credgui"] == [1, 2] and "extra" not in data
    assert JobRecord.from_dict(data) == record


def test_no_file_is_none_and_the_project_directory_rule(tmp_path):
    job = _job(tmp_path)
    assert read_job_file(job) is None
    assert project_dir_of(job) == tmp_path / "proj"
    assert project_dir_of(tmp_path / "proj" / "myrefine") == tmp_path / "proj"


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"pid": "12"}', "pid must be an integer"),
    (b'{"start_time": 1e999}', "start_time must be finite"),
    (b'{"log_offsets": {"run.out": -3}}', "log_offsets.run.out must be a byte offset"),
    (b'{"workers": [["only-a-socket"]]}', "workers must be a list of [socket, device] pairs"),
    (b'{"command": ["mpirun", 3]}', "command must be a list of strings"),
    (b"\xff\xfe not text", "cannot read"),
])
def test_a_corrupt_file_is_one_line_naming_it(tmp_path, content, problem):
    job = _job(tmp_path)
    (job / JOB_FILE).write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_job_file(job)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{job / JOB_FILE}: ") and problem in message, message
