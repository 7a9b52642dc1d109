"""The worker's trust boundary and failure paths (issue 15 cases 1, 4): a socket of another
user is refused before anything is sent, a hung worker costs seconds not an hour, a client
that announces a huge volume and stalls neither makes the worker allocate it nor delays others."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from credgui.denoise import worker
from credgui.denoise.worker import UntrustedWorker, request_denoise, request_info
from credgui.jobs.launch import hook_executable
from credgui.relion.protocol import read_call
from tests.denoise.test_worker import SLOW, _start, _volume
from tests.recon._inputs import make_arrays, write_inputs

NOBODY = 65534
STDLIB_PYTHON = "/usr/bin/python3"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not Path(STDLIB_PYTHON).exists(),
                                reason="plays a second local user with setuid (needs root)")

# Listens on argv[1] as the hostile user: counts the bytes each client sends, answers like a
# worker would (a fake info, lambda thresholds of its choice), writes the count to argv[2].
HOSTILE = r"""
import json, os, socket, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); os.chmod(path, 0o777); s.listen(4)
open(out + ".ready", "w").close()
s.settimeout(300)
c, _ = s.accept(); c.settimeout(2)
total = 0
try:
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        total += len(d)
        if total >= 8:
            h = json.dumps({"status": "ok", "info": {"voxel_size": 2.0, "lambda_low_res": 100.0,
                                                     "lambda_high_res": 50.0}}).encode()
            c.sendall(len(h).to_bytes(8, "big") + h)
except OSError:
    pass
open(out, "w").write(str(total))
"""


@pytest.fixture
def hostile():
    """A shared sticky folder (like /tmp) and a socket in it served by uid 65534."""
    shared = Path(tempfile.mkdtemp(prefix="credgui-shared-"))
    os.chmod(shared, 0o1777)
    sock, count = shared / "cw.sock", shared / "count"
    proc = subprocess.Popen([STDLIB_PYTHON, "-I", "-c", HOSTILE, str(sock), str(count)],
                            preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
    deadline = time.monotonic() + 120  # generous: a loaded CI machine starts Python slowly
    while not Path(f"{count}.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sock.exists()
    yield sock, count, proc
    proc.kill()
    proc.wait(timeout=10)
    shutil.rmtree(shared, ignore_errors=True)


def _received(count: Path) -> int:
    """Bytes the hostile server got (0 when no client even connected within 3 s)."""
    deadline = time.monotonic() + 3
    while not count.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(count.read_text()) if count.exists() else 0


@needs_root
def test_socket_of_another_user_is_refused_before_sending(hostile):
    sock, count, _ = hostile
    with pytest.raises(UntrustedWorker, match=f"owned by uid {NOBODY}, not by you"):
        request_denoise(sock, "unet", {}, _volume(16), timeout_s=5)
    assert _received(count) == 0


@needs_root
def test_server_of_another_user_is_refused_by_peer_uid(hostile):
    sock, count, _ = hostile
    os.chown(sock, os.getuid(), -1)  # even a socket file of ours: the listening process is not
    with pytest.raises(UntrustedWorker, match=f"served by a process of uid {NOBODY}"):
        request_info(sock, "unet", {})
    assert _received(count) == 0


@needs_root
def test_hook_refuses_a_hostile_worker_socket(hostile, tmp_path):
    sock, count, _ = hostile
    job = tmp_path / "job"
    star = write_inputs(job, make_arrays(16, 2.0))
    (job / "credgui.toml").write_text(f'denoiser = "unet"\npixel_size = 2.0\nworker_socket = "{sock}"\n')
    proc = subprocess.run([hook_executable(), str(star)], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "CREDGUI_CONFIG"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(job / "credgui.toml") in lines[0] and f"uid {NOBODY}" in lines[0], lines
    assert not read_call(star).result.exists()
    assert _received(count) == 0


def test_default_socket_is_in_a_private_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    path = worker.default_socket_path(create=True)
    assert path == tmp_path / "run" / "credgui" / "worker.sock"
    assert (os.stat(path.parent).st_mode & 0o777) == 0o700
    os.chmod(path.parent, 0o755)  # others may list it, not plant in it: still fine
    assert worker.default_socket_path() == path
    os.chmod(path.parent, 0o775)
    with pytest.raises(RuntimeError, match="not a private directory"):
        worker.default_socket_path()
    os.chmod(tmp_path / "run", 0o777)  # a runtime dir open to others is not used at all
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert worker.default_socket_path(create=True) == tmp_path / "tmp" / f"credgui-{os.getuid()}" / "worker.sock"


def test_waits_are_sized_to_the_work():
    assert worker.CONNECT_TIMEOUT_S <= 1 and worker.INFO_TIMEOUT_S <= 30
    assert worker.denoise_timeout_s((64, 64, 64)) < 120
    assert worker.denoise_timeout_s((128,) * 3) < worker.denoise_timeout_s((256,) * 3) < 1800


def test_hung_worker_costs_the_hook_seconds_then_it_denoises_itself(tmp_path):
    """A stopped worker: its socket still accepts (the kernel's backlog) and never answers."""
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = tmp_path / "hung.sock"
    hung.bind(str(sock))
    hung.listen(4)
    job = tmp_path / "job"
    star = write_inputs(job, make_arrays(16, 2.0))
    (job / "credgui.toml").write_text(f'denoiser = "test-scale"\npixel_size = 2.0\nworker_socket = "{sock}"\n'
                                      "worker_timeout_s = 1.0\n")
    env = {k: v for k, v in os.environ.items() if k != "CREDGUI_CONFIG"}
    env["CREDGUI_PLUGIN_PATH"] = str(Path(__file__).parents[1] / "recon" / "plugins")
    t0 = time.monotonic()
    with hung:
        proc = subprocess.run([hook_executable(), str(star)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 90  # not the hour it was; the hook itself starts in seconds
    rec = json.loads((job / "credgui_hook.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "ok" and rec["worker"] is False
    assert "did not answer within 1 s" in proc.stderr


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_stalling_client_neither_allocates_nor_delays_others(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = tmp_path / ".w.sock.pid.tmp"  # the pid file's old, guessable temp name (case 2)
    planted.symlink_to(victim)
    sock, proc = _start(tmp_path, idle_timeout_s=120)
    assert victim.read_text() == "precious\n" and planted.is_symlink()
    assert worker.pid_path(sock).read_text().strip() == str(proc.pid) and not worker.pid_path(sock).is_symlink()
    try:
        x = _volume(8)
        np.testing.assert_array_equal(request_denoise(sock, SLOW, {}, x, timeout_s=30), 2 * x)  # warm
        before = _rss_kib(proc.pid)
        staller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staller.connect(str(sock))
        header = json.dumps({"version": 1, "op": "denoise", "name": SLOW, "options": {},
                             "shape": [512, 512, 512], "dtype": "<f4", "nbytes": 4 * 512**3}).encode()
        staller.sendall(len(header).to_bytes(8, "big") + header + b"\0" * 4096)  # then nothing
        time.sleep(0.5)
        t0 = time.monotonic()
        y = request_denoise(sock, SLOW, {}, x, timeout_s=10)
        assert time.monotonic() - t0 < 20, "the stalled client delayed another (it holds its thread 60 s)"
        np.testing.assert_array_equal(y, 2 * x)
        assert _rss_kib(proc.pid) - before < 100 * 1024, "the worker allocated the announced 512 MiB"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as big:  # over --max-box: refused at once
            big.connect(str(sock))
            header = json.dumps({"version": 1, "op": "denoise", "name": SLOW, "options": {},
                                 "shape": [1024, 1024, 600], "dtype": "<f4", "nbytes": 4 * 1024 * 1024 * 600}).encode()
            big.sendall(len(header).to_bytes(8, "big") + header)
            big.settimeout(5)
            assert b"the limit is" in big.recv(4096)
        staller.close()
    finally:
        worker.stop_worker(sock)
        proc.wait(timeout=10)


def test_worker_cli_refuses_bad_arguments_and_unusable_lock_in_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "credgui.cli", "worker", *args], capture_output=True,
                              text=True, timeout=60)

    for value in ("inf", "nan", "0"):
        proc = run("--socket", str(tmp_path / "w.sock"), "--idle-timeout", value)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "--idle-timeout must be a finite number" in proc.stderr
    worker.lock_path(tmp_path / "w.sock").mkdir()  # the lock file exists and cannot be written
    proc = run("--socket", str(tmp_path / "w.sock"), "--idle-timeout", "5")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "cannot open the worker's lock file" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
