"""open_denoiser: worker when one answers (no torch import), this process otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from credgui.denoise import worker
from credgui.denoise.base import Denoiser
from credgui.denoise.dispatch import open_denoiser
from credgui.denoise.worker import WorkerError

TEST_PLUGINS = Path(__file__).parent / "testplugins"
SLOW = "test-slowscale"


@pytest.fixture()
def plugin_path(monkeypatch):
    from credgui.denoise.registry import available_denoisers

    monkeypatch.setenv("CREDGUI_PLUGIN_PATH", str(TEST_PLUGINS))
    available_denoisers.cache_clear()
    yield
    available_denoisers.cache_clear()


def _start(folder: Path) -> tuple[Path, subprocess.Popen]:
    sock = folder / "w.sock"
    before = os.environ.get("CREDGUI_PLUGIN_PATH")
    os.environ["CREDGUI_PLUGIN_PATH"] = str(TEST_PLUGINS)
    try:
        return sock, worker.start_worker(sock, threads=1, idle_timeout_s=120)
    finally:
        if before is None:
            del os.environ["CREDGUI_PLUGIN_PATH"]
        else:
            os.environ["CREDGUI_PLUGIN_PATH"] = before


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    sock, proc = _start(tmp_path_factory.mktemp("dispatch"))
    yield sock, proc
    worker.stop_worker(sock)
    proc.wait(timeout=10)


@pytest.fixture()
def served(shared, plugin_path):
    return shared


@pytest.fixture()
def own_worker(tmp_path, plugin_path):
    sock, proc = _start(tmp_path)
    yield sock, proc
    worker.stop_worker(sock)
    proc.wait(timeout=10)


def test_none_is_none():
    assert open_denoiser("none", {}, socket_path="/nonexistent.sock") is None


def test_local_when_no_worker(tmp_path, plugin_path):
    den = open_denoiser(SLOW, {}, socket_path=tmp_path / "absent.sock")
    assert isinstance(den, Denoiser) and den.info.voxel_size == 2.0
    x = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    np.testing.assert_array_equal(den(x), 2 * x)
    assert den.used_worker is False


def test_worker_answers_and_reported_errors_are_raised(served):
    sock, _ = served
    den = open_denoiser(SLOW, {}, socket_path=sock)
    x = np.ones((4, 4, 4), np.float32)
    np.testing.assert_array_equal(den(x), 2 * x)
    assert den.used_worker is True and den.info.name == SLOW
    with pytest.raises(WorkerError, match="does not exist"):
        open_denoiser("unet", {"weights": "/no/such.pt"}, socket_path=sock)


def test_timeout_falls_back_to_local(served, caplog):
    sock, _ = served
    den = open_denoiser(SLOW, {"sleep_s": 1.0}, socket_path=sock, timeout_s=0.5)
    x = np.ones((4, 4, 4), np.float32)
    with caplog.at_level("WARNING"):
        out = den(x)
    np.testing.assert_array_equal(out, 2 * x)
    assert den.used_worker is False and "did not answer within 0.5 s" in caplog.text
    np.testing.assert_array_equal(den(x), 2 * x)  # no second wait on that worker
    assert den.used_worker is False


def test_worker_killed_mid_request_falls_back_to_local(own_worker):
    sock, proc = own_worker
    den = open_denoiser(SLOW, {"sleep_s": 3.0}, socket_path=sock, timeout_s=60)
    killer = threading.Timer(0.5, lambda: os.kill(proc.pid, signal.SIGKILL))
    killer.start()
    try:
        t0 = time.monotonic()
        out = den(np.ones((4, 4, 4), np.float32))
    finally:
        killer.cancel()
    assert den.used_worker is False and float(out.max()) == 2.0
    assert time.monotonic() - t0 < 0.5 + 3.0 + 2.0  # the worker's error came at once, not at 60 s


def test_worker_path_does_not_import_torch(served):
    sock, _ = served
    code = (
        "import sys, numpy as np\n"
        "from credgui.denoise.dispatch import open_denoiser\n"
        f"d = open_denoiser({SLOW!r}, {{}}, socket_path={str(sock)!r})\n"
        "y = d(np.ones((8, 8, 8), np.float32))\n"
        "assert d.used_worker and float(y.max()) == 2.0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
