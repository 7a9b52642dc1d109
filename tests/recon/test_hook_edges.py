"""The hook's edges (issue 15 cases 3, 5): a log that cannot be written leaves no result, a
plugin's sys.exit and Ctrl-C are one line and a non-zero exit, a stale result is removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from credgui.jobs.launch import hook_executable
from credgui.relion.jobdir import read_hook_records
from credgui.relion.protocol import read_call
from tests.recon._inputs import make_arrays, write_inputs

PLUGINS = Path(__file__).parent / "plugins"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDGUI_CONFIG"}
    env["CREDGUI_PLUGIN_PATH"] = str(PLUGINS)
    return env


def _run(star: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hook_executable(), str(star)], cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.fixture
def job(tmp_path):
    job = tmp_path / "job"
    star = write_inputs(job, make_arrays(16, 2.0))
    return job, star


def test_full_disk_on_the_log_leaves_no_result(job, tmp_path):
    job, star = job
    (job / "credgui.toml").write_text('denoiser = "none"\n')
    (job / "credgui_hook.jsonl").symlink_to("/dev/full")  # every write: ENOSPC, as a full disk
    proc = _run(star, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "credgui_hook.jsonl" in lines[0] and "No space left" in lines[0], lines
    assert not read_call(star).result.exists()
    assert not [p for p in job.iterdir() if p.name.endswith(".tmp")]


def test_torn_last_line_is_skipped_and_the_next_record_kept(job, tmp_path, caplog):
    job, star = job
    (job / "credgui.toml").write_text('denoiser = "none"\nkeep_inputs = true\n')
    assert _run(star, tmp_path).returncode == 0
    log = job / "credgui_hook.jsonl"
    log.write_bytes(log.read_bytes()[:-40])  # the disk filled mid-record
    assert _run(star, tmp_path).returncode == 0
    with caplog.at_level("WARNING", logger="credgui.relion.hooklog"):
        records = read_hook_records(job)
    assert [r.status for r in records] == ["ok"]  # the torn one skipped, the new one whole
    assert "skipped a torn or malformed line at byte 0" in caplog.text
    assert len(log.read_text().splitlines()) == 2


def test_plugin_sys_exit_zero_is_an_error_and_removes_the_stale_result(job, tmp_path):
    job, star = job
    call = read_call(star)
    call.result.write_bytes(b"an earlier attempt's result")
    (job / "credgui.toml").write_text('denoiser = "test-misbehave"\npixel_size = 2.0\n'
                                      '[denoiser_options]\nexit = 0\n')
    proc = _run(star, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sys.exit(0)" in lines[0] and str(star) in lines[0], lines
    assert not call.result.exists()
    rec = json.loads((job / "credgui_hook.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "error" and "sys.exit(0)" in rec["error"]


def test_ctrl_c_is_one_line(job, tmp_path):
    job, star = job
    marker = tmp_path / "started"
    (job / "credgui.toml").write_text(f'denoiser = "test-misbehave"\npixel_size = 2.0\n'
                                      f'[denoiser_options]\nmarker = "{marker}"\nsleep_s = 30\n')
    proc = subprocess.Popen([hook_executable(), str(star)], cwd=tmp_path, env=_env(), stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], lines
    assert not read_call(star).result.exists()


@pytest.mark.parametrize("content, says", [(b"", "is empty: say what the hook should do"),
                                            (b"pixel_size = 2.0\n", "but not denoiser"),
                                            (b'denoiser = "none"\n\xff\xfe\x00', "not UTF-8")])
def test_empty_or_binary_config_stops_the_hook_naming_the_config(job, tmp_path, content, says):
    job, star = job
    (job / "credgui.toml").write_bytes(content)
    proc = _run(star, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"credgui-reconstruct: error: {job / 'credgui.toml'}: "), lines
    assert says in lines[0], lines
    assert not read_call(star).result.exists()


def _complex(path: Path) -> Path:
    import mrcfile
    import numpy as np

    real = mrcfile.read(path)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data((real + 1j * real).astype(np.complex64))
    return path


def _zero_weight(path: Path) -> Path:
    import mrcfile

    with mrcfile.open(path, mode="r+") as mrc:
        mrc.data[...] = 0
    return path


def _negative_nx(path: Path) -> Path:
    raw = bytearray(path.read_bytes())
    raw[0:4] = (-5).to_bytes(4, "little", signed=True)
    path.write_bytes(raw)
    return path


def _star_line(star: Path, label: str, new: str | None) -> Path:
    lines = star.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(f"_{label} "))
    lines.insert(i + 1, f"_{label} {lines[i].split()[1]}") if new is None else lines.__setitem__(i, f"_{label} {new}")
    star.write_text("\n".join(lines) + "\n")
    return star


def _device(star: Path) -> Path:
    star.write_text(star.read_text().replace(f"{star.with_suffix('')}_data_real.mrc", "/dev/zero"))
    return Path("/dev/zero")


@pytest.mark.parametrize("corrupt, which, problem", [
    (_complex, "data_real", "complex values"),
    (_zero_weight, "weight", "all zero"),
    (_negative_nx, "data_real", "not a readable MRC file"),
    (lambda star: _star_line(star, "rlnTau2FudgeFactor", None), "star", "appears twice"),
    (lambda star: _star_line(star, "rlnTau2FudgeFactor", "inf"), "star", "finite"),
    (_device, "star", "not a regular file"),
])
def test_nonsense_input_is_refused_naming_the_file(job, tmp_path, corrupt, which, problem):
    job, star = job
    (job / "credgui.toml").write_text('denoiser = "none"\n')
    result = read_call(star).result
    target = corrupt(star if which == "star" else star.parent / f"{star.stem}_{which}.mrc")
    proc = _run(star, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"error: {target}: " in lines[0] and problem in lines[0], lines
    assert not result.exists()
