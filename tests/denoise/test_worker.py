"""The warm worker: real worker processes on real Unix sockets, and the stdlib+numpy client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from credgui.denoise import worker
from credgui.denoise.worker import WorkerError, request_denoise

TEST_PLUGINS = Path(__file__).parent / "testplugins"
SLOW = "test-slowscale"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import torch

    from credgui.denoise.unet import UNet3D, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "unet.pt"
    return save_model(
        path, UNet3D(depth=2).eval(), {"voxel_size": 1.5, "description": "worker test"}
    )


def _start(folder: Path, **kw) -> tuple[Path, subprocess.Popen]:
    sock = folder / "w.sock"
    before = os.environ.get("CREDGUI_PLUGIN_PATH")
    os.environ["CREDGUI_PLUGIN_PATH"] = str(TEST_PLUGINS)
    try:
        proc = worker.start_worker(sock, threads=1, **kw)
    finally:
        if before is None:
            del os.environ["CREDGUI_PLUGIN_PATH"]
        else:
            os.environ["CREDGUI_PLUGIN_PATH"] = before
    return sock, proc


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One worker for the module's tests (starting one costs a torch import)."""
    sock, proc = _start(tmp_path_factory.mktemp("worker"), idle_timeout_s=300)
    yield sock
    worker.stop_worker(sock)
    proc.wait(timeout=10)


def _volume(n: int = 40, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, n, n)) * 2 + 1).astype(np.float32)


def test_same_result_as_in_process(served, weights):
    from credgui.denoise.unet import load_unet_denoiser

    x = _volume()
    expected = load_unet_denoiser(weights, device="cpu")(x)
    got = request_denoise(
        served, "unet", {"weights": str(weights), "device": "cpu"}, x, timeout_s=60
    )
    assert got is not None and got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    info = worker.request_info(served, "unet", {"weights": str(weights), "device": "cpu"})
    assert info["voxel_size"] == 1.5 and info["description"] == "worker test"


def test_concurrent_requests_are_queued(served, tmp_path):
    log = tmp_path / "busy.txt"
    options = {"sleep_s": 0.4, "log": str(log)}
    volumes = [_volume(24, seed=s) for s in (1, 2)]
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            results[i] = request_denoise(served, SLOW, options, volumes[i], timeout_s=30)
        except Exception as exc:  # noqa: BLE001 (recorded, asserted below)
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for i in (0, 1):
        np.testing.assert_array_equal(results[i], 2 * volumes[i])
    (s1, e1), (s2, e2) = sorted(
        tuple(map(float, line.split())) for line in log.read_text().splitlines()
    )
    assert e1 <= s2, "the two requests ran at the same time"


def test_bad_requests_do_not_kill_the_worker(served, weights):
    with pytest.raises(WorkerError, match="unknown denoiser 'nope'"):
        request_denoise(served, "nope", {}, _volume(8), timeout_s=30)
    with pytest.raises(WorkerError, match="does not exist") as err:
        request_denoise(served, "unet", {"weights": "/no/such/model.pt"}, _volume(8), timeout_s=30)
    assert err.value.remote_type == "InputError"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # garbage on the wire
        raw.connect(str(served))
        raw.sendall(b"\xff" * 8 + b"garbage")
        raw.settimeout(5)
        assert b"error" in raw.recv(4096)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # an absurd payload length
        raw.connect(str(served))
        header = b'{"op": "denoise", "version": 1, "nbytes": 1000000000000000}'
        raw.sendall(len(header).to_bytes(8, "big") + header)
        raw.settimeout(5)
        assert b"limit" in raw.recv(4096)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # a client that hangs up early
        raw.connect(str(served))
        raw.sendall(b"\x00\x00\x00\x00\x00\x00\x00\x40{")
    state = worker.ping(served)
    assert state is not None and state["requests"] >= 3
    x = _volume(16)
    np.testing.assert_array_equal(request_denoise(served, SLOW, {}, x, timeout_s=30), 2 * x)


def test_slow_reply_times_out_instead_of_hanging(served):
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not answer within 0.3 s"):
        request_denoise(served, SLOW, {"sleep_s": 1.5}, _volume(8), timeout_s=0.3)
    assert time.monotonic() - t0 < 1.0
    time.sleep(1.5)  # let the worker finish that one before the next test


def test_no_worker_is_none_fast(tmp_path):
    x = _volume(8)
    t0 = time.monotonic()
    assert request_denoise(tmp_path / "absent.sock", "unet", {}, x, timeout_s=30) is None
    assert time.monotonic() - t0 < 0.1
    stale = tmp_path / "stale.sock"  # a dead worker's socket file: connection refused
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    assert stale.exists()
    t0 = time.monotonic()
    assert request_denoise(stale, "unet", {}, x, timeout_s=30) is None
    assert time.monotonic() - t0 < 0.1
    assert worker.ping(stale) is None


def test_killed_worker_mid_request_is_an_error(tmp_path):
    sock, proc = _start(tmp_path, idle_timeout_s=60)
    killer = threading.Timer(0.5, lambda: os.kill(proc.pid, signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(WorkerError, match="failed mid-request"):
            request_denoise(sock, SLOW, {"sleep_s": 10}, _volume(16), timeout_s=30)
        assert time.monotonic() - t0 < 5
    finally:
        killer.cancel()
        proc.wait(timeout=10)
    # the dead worker's socket is left behind: the next call falls back at once
    assert request_denoise(sock, SLOW, {}, _volume(8), timeout_s=30) is None


def test_one_worker_per_socket_idle_exit_and_cleanup(tmp_path):
    sock, proc = _start(tmp_path, idle_timeout_s=4)
    pid = worker.ping(sock)["pid"]
    assert pid == proc.pid and worker.pid_path(sock).read_text().strip() == str(pid)
    second = subprocess.run(
        [sys.executable, "-m", "credgui.cli", "worker", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and "already serves" in second.stderr
    assert worker.ping(sock)["pid"] == pid  # the first one still serves
    assert proc.wait(timeout=30) == 0  # idle exit
    assert not sock.exists() and not worker.pid_path(sock).exists()
    assert "idle" in worker.log_path(sock).read_text()


def test_stop_worker(tmp_path):
    sock, proc = _start(tmp_path, idle_timeout_s=60)
    assert worker.stop_worker(sock) is True
    assert proc.wait(timeout=10) == 0 and not sock.exists()
    assert worker.stop_worker(sock) is False


def test_client_never_imports_torch(served, weights):
    """A hook call answered by the worker must not pay torch's import time."""
    code = (
        "import sys, time, numpy as np\n"
        "t = time.perf_counter()\n"
        "from credgui.denoise.worker import request_denoise\n"
        f"y = request_denoise({str(served)!r}, 'unet', {{'weights': {str(weights)!r}}},"
        " np.ones((32, 32, 32), np.float32) + np.arange(32, dtype=np.float32), timeout_s=60)\n"
        "assert y is not None and y.shape == (32, 32, 32)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_worker_that_cannot_start_says_why(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(RuntimeError, match="AF_UNIX limit"):
        worker.start_worker(deep / "w.sock", wait_s=60)


def test_ensure_worker_and_cli_status(served):
    pid = worker.ensure_worker(served)  # one answers: no second worker
    assert pid == worker.ping(served)["pid"]
    status = subprocess.run(
        [sys.executable, "-m", "credgui.cli", "worker", "--socket", str(served), "--status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and f'"pid": {pid}' in status.stdout
