"""The warm denoiser worker: one long-lived process keeps torch and the models loaded.

Why: importing torch costs 1-2.5 s and loading a model more; RELION runs the hook once per
half-map per iteration. The hook (``credgui-reconstruct``) asks the worker first with
``request_denoise``; this module's client side imports only the standard library and numpy,
so a hook call answered by the worker never imports torch. ``None`` from the client means
"no worker here" and the hook denoises in its own process instead.

Each connection is served by its own thread, so a client that stalls mid-upload delays no
other; denoiser calls run one at a time (a lock), in arrival order: the two half-maps that
RELION reconstructs at the same time (ranks 1 and 2) queue onto one GPU instead of fighting
over it. A request is read as it arrives (no allocation for bytes not yet sent), within
``REQUEST_READ_TIMEOUT_S``, and refused when its announced volume exceeds ``max_box`` voxels
a side or does not match its shape.

Trust (docs/SECURITY.md): the default socket is ``default_socket_path()``, in a per-user
directory of mode 0700 (``$XDG_RUNTIME_DIR/credgui``, else ``/tmp/credgui-UID``); the socket
is born mode 0600. The client refuses (``UntrustedWorker``, one line) a socket file not owned
by its own uid and a server whose SO_PEERCRED uid is not its own, before sending anything;
the worker likewise answers only clients of its own uid. Waits are bounded: ``CONNECT_TIMEOUT_S``
to connect, ``INFO_TIMEOUT_S`` for ``info``, ``denoise_timeout_s(shape)`` for ``denoise``.
It caches denoisers by (plugin name, options, weights file + mtime, device), so a retrained
weights file is picked up, exits after ``idle_timeout_s`` without requests, writes
``SOCKET.pid`` (its pid) and holds ``SOCKET.lock`` (flock: one worker per socket), and removes
its socket and pid file on exit. A bad request gets an error reply; the worker lives on.

Wire protocol (Unix domain stream socket, one request and one reply per connection)::

    message := HEADER_LEN (8 bytes, unsigned big-endian) | HEADER (UTF-8 JSON) | PAYLOAD
    len(PAYLOAD) == HEADER["nbytes"] (0 when absent)

Request headers (``"version": 1`` in each):

- ``{"op": "denoise", "name": plugin, "options": {...}, "shape": [z, y, x],
  "dtype": "<f4", "nbytes": 4*z*y*x}`` + the volume, C order, little-endian float32.
- ``{"op": "info", "name", "options"}``: load (and cache) the denoiser, return its info.
- ``{"op": "ping"}``: liveness and state.  ``{"op": "shutdown"}``: reply, then exit.

Reply header: ``{"status": "ok", ...}`` (for denoise: ``shape``, ``dtype``, ``nbytes`` + the
denoised volume, plus ``info`` and ``seconds``), or ``{"status": "error", "error": one line,
"type": exception class name}`` with no payload.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import select
import signal
import socket
import stat as stat_mod
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from credgui._io import write_text_atomic

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_IDLE_TIMEOUT_S = 1800.0
CONNECT_TIMEOUT_S = 0.5
INFO_TIMEOUT_S = 20.0  # loading a model (torch is imported at the worker's start)
DENOISE_BASE_S = 60.0
DENOISE_S_PER_MVOXEL = 30.0
"""``denoise_timeout_s``: measured U-Net inference on 2 loaded CPU cores is 0.5-11 s per 10^6
voxels (boxes 48-96, 2026-12); 30 s per 10^6 voxels, doubled for the other half-map queued
ahead, plus 60 s: a 64^3 map waits at most 76 s, a 256^3 one 17 min, never an hour."""
DEFAULT_TIMEOUT_S = 3600.0  # kept for importers; the hook uses the bounds above
REQUEST_READ_TIMEOUT_S = 60.0  # the worker's patience with a client that stops sending
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_BOX = 512  # largest volume side the worker accepts (512^3 float32 = 512 MiB)
MAX_PAYLOAD_BYTES = 4 * DEFAULT_MAX_BOX**3
_CHUNK = 8 << 20
MAX_CACHED = 4
_HEADER_LEN = struct.Struct(">Q")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def denoise_timeout_s(shape: tuple[int, ...]) -> float:
    """How long the hook waits for a denoise reply of a volume of ``shape`` (s); see above."""
    return DENOISE_BASE_S + 2.0 * DENOISE_S_PER_MVOXEL * float(np.prod(shape)) / 1e6


def default_socket_path(create: bool = False) -> Path:
    """``$XDG_RUNTIME_DIR/credgui/worker.sock`` (when that is a private directory of ours),
    else ``/tmp/credgui-UID/worker.sock``. ``create``: make the folder (mode 0700) if missing.
    RuntimeError when the folder exists but is not a directory of ours, or others may write
    in it (they could replace the socket; reading it is harmless: the socket is 0600 and the
    client checks the server's uid)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = None
    if runtime:
        try:
            st = os.lstat(runtime)
            if stat_mod.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                base = Path(runtime) / "credgui"
        except OSError:
            base = None
    if base is None:
        base = Path(tempfile.gettempdir()) / f"credgui-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700)
    if base.exists() or base.is_symlink():
        st = os.lstat(base)
        if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise RuntimeError(
                f"{base}: not a private directory of uid {os.getuid()} (owner uid {st.st_uid}, "
                f"mode {stat_mod.filemode(st.st_mode)}, writable by others?); remove it or pass --socket"
            )
    return base / "worker.sock"


class WorkerError(RuntimeError):
    """The worker answered with an error, died mid-request, or did not answer in time.

    ``remote_type``: the exception class name the worker reported (None for transport errors).
    """

    def __init__(self, message: str, remote_type: str | None = None) -> None:
        super().__init__(message)
        self.remote_type = remote_type


class UntrustedWorker(WorkerError):
    """The socket, or the process listening on it, belongs to another user: nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, remote_type="UntrustedWorker")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    _pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return uid


def pid_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.pid")


def log_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.log")


def lock_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.lock")


# --------------------------------------------------------------------------- framing


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _send_message(sock: socket.socket, header: dict[str, Any], payload: Any = b"") -> None:
    data = json.dumps(header, default=str).encode()
    sock.sendall(_HEADER_LEN.pack(len(data)) + data)
    if len(memoryview(payload)):
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None, what: str) -> bytearray:
    """Exactly ``n`` bytes; EOF -> ConnectionError; past ``deadline`` -> TimeoutError."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out reading {what}")
            sock.settimeout(remaining)
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            raise TimeoutError(f"timed out reading {what}") from None
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes of {what}")
        got += k
    return buf


def _recv_growing(sock: socket.socket, n: int, deadline: float | None, what: str) -> bytearray:
    """Exactly ``n`` bytes, the buffer grown as they arrive (a client that announces much and
    sends little costs only what it sent); errors as ``_recv_exact``."""
    buf = bytearray()
    while len(buf) < n:
        buf += _recv_exact(sock, min(_CHUNK, n - len(buf)), deadline, what)
    return buf


def _recv_message(
    sock: socket.socket, deadline: float | None, max_payload: int = MAX_PAYLOAD_BYTES,
    check: Any = None,
) -> tuple[dict[str, Any], bytearray]:
    """One message. ``check(header)``: called before the payload is read (raise to refuse)."""
    (size,) = _HEADER_LEN.unpack(_recv_exact(sock, _HEADER_LEN.size, deadline, "the header length"))
    if size > MAX_HEADER_BYTES:
        raise ValueError(f"header of {size} bytes is too large (not a credgui worker message?)")
    header = json.loads(_recv_exact(sock, size, deadline, "the header"))
    if not isinstance(header, dict):
        raise ValueError("message header is not a JSON object")
    nbytes = header.get("nbytes", 0) or 0
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= max_payload:
        raise ValueError(f"payload of {nbytes!r} bytes announced; the limit is {max_payload}")
    if check is not None:
        check(header)
    payload = _recv_growing(sock, nbytes, deadline, "the volume") if nbytes else bytearray()
    return header, payload


def _volume_from(header: dict[str, Any], payload: bytearray) -> np.ndarray:
    shape = tuple(int(s) for s in header.get("shape", ()))
    dtype = np.dtype(header.get("dtype", "<f4"))
    if dtype != np.dtype("<f4"):
        raise ValueError(f"volume dtype must be little-endian float32 '<f4', got {dtype.str!r}")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"volume shape must be 3 positive sizes (z, y, x), got {list(shape)}")
    if len(payload) != 4 * int(np.prod(shape)):
        raise ValueError(
            f"payload of {len(payload)} bytes does not fit shape {list(shape)} float32"
        )
    return np.frombuffer(payload, dtype="<f4").reshape(shape)


# ------------------------------------------------------------------ client (stdlib + numpy)


def _connect(socket_path: str | Path, connect_timeout_s: float) -> socket.socket | None:
    """A connection to our own worker; None when none listens; UntrustedWorker when the socket
    file or the listening process belongs to another uid (checked before anything is sent)."""
    path = os.fspath(socket_path)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    uid = os.getuid()
    if not stat_mod.S_ISSOCK(st.st_mode):
        raise UntrustedWorker(f"worker socket {path}: not a socket ({stat_mod.filemode(st.st_mode)}); refused")
    if st.st_uid != uid:
        raise UntrustedWorker(
            f"worker socket {path}: owned by uid {st.st_uid}, not by you (uid {uid}); refused, "
            'nothing sent (start your own: credgui worker, and worker_socket = "default")'
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(connect_timeout_s)
    try:
        sock.connect(path)
    except (TimeoutError, FileNotFoundError, ConnectionRefusedError, OSError) as exc:
        # refused: a stale socket of a dead worker; timeout: backlog full; both -> no worker
        log.debug("no worker at %s (%s)", path, exc)
        sock.close()
        return None
    server_uid = peer_uid(sock)
    if server_uid != uid:
        sock.close()
        raise UntrustedWorker(
            f"worker socket {path}: served by a process of uid {server_uid}, not yours (uid {uid}); "
            "refused, nothing sent"
        )
    return sock


def _exchange(
    socket_path: str | Path,
    header: dict[str, Any],
    payload: Any = b"",
    *,
    timeout_s: float,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    reply_max: int = 0,
) -> tuple[dict[str, Any], bytearray] | None:
    """Send one request, return the reply; None when no worker listens; WorkerError otherwise.

    ``reply_max``: the largest reply payload accepted (the request's own volume for denoise)."""
    sock = _connect(socket_path, connect_timeout_s)
    if sock is None:
        return None
    deadline = time.monotonic() + timeout_s
    with sock:
        sock.settimeout(max(timeout_s, 1e-3))
        try:
            _send_message(sock, {"version": PROTOCOL_VERSION, **header}, payload)
            reply, data = _recv_message(sock, deadline, max_payload=reply_max)
        except TimeoutError:
            raise WorkerError(
                f"denoiser worker at {socket_path} did not answer within {timeout_s:.3g} s "
                f"(busy or hung; see {log_path(socket_path)})"
            ) from None
        except (ConnectionError, OSError, ValueError) as exc:
            raise WorkerError(
                f"denoiser worker at {socket_path} failed mid-request ({_one_line(exc)}); "
                f"it may have died, see {log_path(socket_path)}"
            ) from None
    if reply.get("status") != "ok":
        raise WorkerError(
            f"denoiser worker: {reply.get('error', 'unknown error')}", remote_type=reply.get("type")
        )
    return reply, data


def _plain_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """JSON-ready options; a relative ``weights`` made absolute (the worker has its own cwd)."""
    opts = dict(options or {})
    if opts.get("weights"):
        opts["weights"] = os.path.abspath(os.fspath(opts["weights"]))
    return opts


def request_denoise(
    socket_path: str | Path,
    name: str,
    options: dict[str, Any] | None,
    volume: np.ndarray,
    *,
    timeout_s: float | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    reply: dict[str, Any] | None = None,
) -> np.ndarray | None:
    """Denoise ``volume`` ((z, y, x) real space) with plugin ``name`` in the worker.

    Returns the denoised float32 volume, same shape; ``None`` at once when no worker listens
    at ``socket_path`` (no socket file, or a stale one: connection refused). Raises
    ``WorkerError`` (a RuntimeError) when the worker replies with an error, dies mid-request,
    or gives no reply within ``timeout_s`` (which includes waiting behind other requests;
    default ``denoise_timeout_s(volume.shape)``). ``UntrustedWorker`` (a WorkerError) when
    the socket or its server belongs to another user: nothing is sent then.
    ``reply``: a dict to receive the reply header (``info``; ``seconds``: ``load`` and
    ``denoise``, the worker's own timings, for the hook's log).
    """
    vol = np.ascontiguousarray(volume, dtype="<f4")
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x), got shape {vol.shape}")
    header = {
        "op": "denoise",
        "name": name,
        "options": _plain_options(options),
        "shape": list(vol.shape),
        "dtype": "<f4",
        "nbytes": vol.nbytes,
    }
    answer = _exchange(
        socket_path,
        header,
        memoryview(vol).cast("B"),
        timeout_s=denoise_timeout_s(vol.shape) if timeout_s is None else timeout_s,
        reply_max=vol.nbytes,
        connect_timeout_s=connect_timeout_s,
    )
    if answer is None:
        return None
    header_in, data = answer
    if reply is not None:
        reply.update(header_in)
    try:
        out = _volume_from(header_in, data)
    except ValueError as exc:
        raise WorkerError(f"denoiser worker sent a bad volume ({exc})") from None
    if out.shape != vol.shape:
        raise WorkerError(f"denoiser worker returned shape {out.shape} for input {vol.shape}")
    return out


def request_info(
    socket_path: str | Path,
    name: str,
    options: dict[str, Any] | None,
    *,
    timeout_s: float = INFO_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> dict[str, Any] | None:
    """Load (and cache) a denoiser in the worker; its ``DenoiserInfo`` fields as a dict.

    The hook needs ``voxel_size`` before denoising (it resamples to it) and must not import
    torch to learn it. None when no worker listens; WorkerError as ``request_denoise``.
    """
    answer = _exchange(
        socket_path,
        {"op": "info", "name": name, "options": _plain_options(options)},
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
    )
    return None if answer is None else dict(answer[0].get("info") or {})


def ping(socket_path: str | Path, *, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The worker's state (pid, device, uptime_s, requests, cached) or None when none answers.

    A worker busy on a long request answers only after it: a timeout returns None too.
    """
    try:
        answer = _exchange(socket_path, {"op": "ping"}, timeout_s=timeout_s)
    except UntrustedWorker:
        raise
    except WorkerError:
        return None
    return None if answer is None else answer[0]


def start_worker(
    socket_path: str | Path,
    *,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    device: str = "auto",
    threads: int | None = None,
    python: str | None = None,
    wait_s: float = 60.0,
) -> subprocess.Popen:
    """Start ``credgui worker`` detached (own session and process group), log in ``SOCKET.log``.

    Waits up to ``wait_s`` for it to answer a ping (0: do not wait). RuntimeError, quoting the
    log's tail, when it exits or stays silent. The socket's folder is created if needed.
    """
    sock = Path(socket_path).absolute()
    sock.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        python or sys.executable,
        "-m",
        "credgui.cli",
        "worker",
        "--socket",
        str(sock),
        "--idle-timeout",
        str(idle_timeout_s),
        "--device",
        device,
    ]
    if threads is not None:
        cmd += ["--threads", str(int(threads))]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # importable even when not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    logfile = log_path(sock)
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(sock.parent),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    if wait_s > 0:
        deadline = time.monotonic() + wait_s
        while True:
            if ping(sock, timeout_s=1.0) is not None:
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"denoiser worker exited with status {proc.returncode}: {_tail(logfile)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"denoiser worker did not answer within {wait_s:g} s: {_tail(logfile)}"
                )
            time.sleep(0.05)
    return proc


def ensure_worker(socket_path: str | Path, **kwargs: Any) -> int:
    """The pid of the worker on ``socket_path``; starts one (``start_worker``) if none answers."""
    state = ping(socket_path)
    if state is not None:
        return int(state["pid"])
    return start_worker(socket_path, **kwargs).pid


def stop_worker(socket_path: str | Path, *, timeout_s: float = 10.0) -> bool:
    """Ask the worker to exit (after its current request); True when one was running and is gone.

    A worker that does not answer within ``timeout_s`` but whose pid file names a live
    ``credgui worker`` process for this socket gets SIGTERM, then SIGKILL.
    """
    pid = _read_pid(socket_path)
    try:
        answer = _exchange(socket_path, {"op": "shutdown"}, timeout_s=timeout_s)
    except WorkerError:
        answer = None
    if answer is not None:
        pid = int(answer[0].get("pid", pid or 0)) or pid
    if pid is None or not _is_our_worker(pid, socket_path):
        return answer is not None
    if _wait_gone(pid, timeout_s if answer is not None else 0.0):
        return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, timeout_s):
            return True
    return False


def _read_pid(socket_path: str | Path) -> int | None:
    try:
        return int(pid_path(socket_path).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_worker(pid: int, socket_path: str | Path) -> bool:
    """True when ``pid`` is alive and its command line is a credgui worker on this socket."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "worker" in args and any(Path(a).name == Path(socket_path).name for a in args)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1][:1]
            if state == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        except PermissionError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return " | ".join(text[-lines:]) or f"(empty log {path})"


# --------------------------------------------------------------------------- server


class _Cache:
    """Loaded denoisers, least recently used dropped beyond ``MAX_CACHED``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.items: OrderedDict[tuple, Any] = OrderedDict()

    def key(self, name: str, options: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        opts = dict(options)
        if opts.get("device") in (None, "", "auto") and self.device != "auto":
            opts["device"] = self.device
        stamp = None
        if opts.get("weights"):
            try:
                stat = os.stat(opts["weights"])
                stamp = (os.path.realpath(opts["weights"]), stat.st_mtime_ns, stat.st_size)
            except OSError:
                stamp = (opts["weights"], None, None)  # missing: the plugin says so
        rest = json.dumps(
            {k: v for k, v in opts.items() if k not in ("weights", "device")},
            sort_keys=True,
            default=str,
        )
        return (name, rest, stamp, opts.get("device", "auto")), opts

    def get(self, name: str, options: dict[str, Any]) -> Any:
        from credgui.denoise.registry import create_denoiser

        key, opts = self.key(name, options)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        # an older version of the same weights file is dead weight now
        same_file = [k for k in self.items if k[2] and key[2] and k[2][0] == key[2][0]]
        for old in [k for k in same_file if k[0] == key[0] and k[1] == key[1] and k[3] == key[3]]:
            del self.items[old]
        t0 = time.perf_counter()
        denoiser = create_denoiser(name, opts)
        if denoiser is None:
            raise ValueError(
                f"denoiser {name!r} has no network to run (the hook handles it itself)"
            )
        log.info("loaded denoiser %s (%s) in %.2f s", name, key, time.perf_counter() - t0)
        self.items[key] = denoiser
        while len(self.items) > MAX_CACHED:
            self.items.popitem(last=False)
        return denoiser


def _info_dict(denoiser: Any) -> dict[str, Any]:
    info = getattr(denoiser, "info", None)
    if info is None:
        return {}
    fields = ("name", "voxel_size", "box", "lambda_low_res", "lambda_high_res", "description")
    return {f: getattr(info, f, None) for f in fields}


class _Stop(BaseException):
    """SIGTERM/SIGINT: unwinds past the per-request ``except Exception``."""


def serve(
    socket_path: str | Path | None = None,
    *,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    device: str = "auto",
    threads: int | None = None,
    max_box: int = DEFAULT_MAX_BOX,
) -> int:
    """Serve denoising requests on ``socket_path`` until idle for ``idle_timeout_s`` or stopped.

    ``socket_path`` None: ``default_socket_path(create=True)``. Returns 0 after an idle exit,
    a shutdown request, SIGTERM or SIGINT. Raises RuntimeError when another worker already
    serves this socket (it holds ``SOCKET.lock``) or the lock file cannot be opened,
    ValueError for a socket path longer than AF_UNIX allows or a bad timeout/box.
    """
    import fcntl

    if not (isinstance(idle_timeout_s, (int, float)) and math.isfinite(idle_timeout_s) and idle_timeout_s > 0):
        raise ValueError(f"idle timeout must be a finite number of seconds > 0, got {idle_timeout_s!r}")
    if not (isinstance(max_box, int) and max_box >= 1):
        raise ValueError(f"max box must be a positive number of voxels, got {max_box!r}")
    sock_path = (default_socket_path(create=True) if socket_path is None else Path(socket_path)).absolute()
    if len(os.fsencode(sock_path)) > 107:
        raise ValueError(
            f"socket path is {len(os.fsencode(sock_path))} bytes, over the AF_UNIX limit "
            f"of 107: {sock_path}"
        )
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.stat(sock_path.parent)
    if parent.st_mode & 0o022 and not parent.st_mode & stat_mod.S_ISVTX:
        log.warning("%s is writable by others and not sticky: they could replace the socket; "
                    "prefer the default %s", sock_path.parent, default_socket_path())
    try:
        fd = os.open(lock_path(sock_path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RuntimeError(f"{lock_path(sock_path)}: cannot open the worker's lock file "
                           f"({exc.strerror or exc}); remove it or choose another --socket") from None
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(f"another denoiser worker already serves {sock_path}") from None

    try:
        import torch  # warm up now, not at the first request

        if threads is not None:
            torch.set_num_threads(int(threads))
    except ImportError:
        pass

    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()  # stale: its worker is gone (we hold the lock)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # the socket is born rw------- : only this user may connect
    try:
        server.bind(str(sock_path))
    finally:
        os.umask(umask)
    server.listen(16)
    pid_file = pid_path(sock_path)
    write_text_atomic(pid_file, f"{os.getpid()}\n")

    def _terminate(signum: int, _frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGINT)}
    ctx = _Context(device, max_box)
    log.info(
        "denoiser worker pid %d serving %s (device %s, idle timeout %g s, max box %d)",
        os.getpid(),
        sock_path,
        device,
        idle_timeout_s,
        max_box,
    )
    try:
        while not ctx.stop.is_set():
            remaining = idle_timeout_s - (time.monotonic() - ctx.last)
            if remaining <= 0:
                if ctx.active:
                    ctx.last = time.monotonic()  # a long request is not idleness
                    continue
                log.info("idle for %g s: exiting", idle_timeout_s)
                break
            try:
                ready, _, _ = select.select([server], [], [], min(remaining, 0.5))
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                conn, _ = server.accept()
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ECONNABORTED):
                    continue
                raise
            ctx.begin()
            threading.Thread(target=_serve_connection, args=(conn, ctx), daemon=True).start()
        if ctx.stop.is_set():
            log.info("shutdown requested: exiting")
    except _Stop as why:
        log.info("%s: exiting", why)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.close()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        lock.close()
    return 0


class _Context:
    """What the connection threads share: the cache (loads under ``load_lock``), the one
    ``run_lock`` that serialises denoiser calls, the counters and the stop flag."""

    def __init__(self, device: str, max_box: int) -> None:
        self.cache = _Cache(device)
        self.max_box = max_box
        self.load_lock = threading.Lock()
        self.run_lock = threading.Lock()
        self.count_lock = threading.Lock()
        self.stop = threading.Event()
        self.active = 0
        self.last = time.monotonic()
        self.state: dict[str, Any] = {"pid": os.getpid(), "started": time.time(), "requests": 0,
                                      "device": device, "max_box": max_box}

    def begin(self) -> None:
        with self.count_lock:
            self.active += 1

    def end(self) -> None:
        with self.count_lock:
            self.active -= 1
            self.last = time.monotonic()

    def check(self, header: dict[str, Any]) -> None:
        """Refuse an oversized or inconsistent volume before any of it is read."""
        nbytes = header.get("nbytes", 0) or 0
        if header.get("op") != "denoise":
            if nbytes:
                raise ValueError(f"op {header.get('op')!r} takes no payload, {nbytes} bytes announced")
            return
        shape = header.get("shape")
        if (not isinstance(shape, list) or len(shape) != 3
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
            raise ValueError(f"volume shape must be 3 positive sizes (z, y, x), got {shape!r}")
        if max(shape) > self.max_box:
            raise ValueError(f"volume {shape} exceeds the worker's limit of {self.max_box} voxels a side "
                             "(credgui worker --max-box)")
        if nbytes != 4 * shape[0] * shape[1] * shape[2]:
            raise ValueError(f"payload of {nbytes} bytes announced for shape {shape} float32")


def _serve_connection(conn: socket.socket, ctx: _Context) -> None:
    try:
        with conn:
            if _handle(conn, ctx):
                ctx.stop.set()
    except Exception as exc:  # noqa: BLE001  (a thread must not die silently)
        log.warning("connection failed: %s: %s", type(exc).__name__, _one_line(exc))
    finally:
        ctx.end()


def _handle(conn: socket.socket, ctx: _Context) -> bool:
    """Answer one connection; True when the worker should exit. Never raises for a bad request."""
    t0 = time.perf_counter()
    try:
        uid = peer_uid(conn)
        if uid != os.getuid():
            raise PermissionError(f"client uid {uid} is not this worker's uid {os.getuid()}")
        header, payload = _recv_message(conn, time.monotonic() + REQUEST_READ_TIMEOUT_S,
                                        max_payload=4 * ctx.max_box**3, check=ctx.check)
    except Exception as exc:  # noqa: BLE001 (timeout, hang-up, bad framing, a length too large, another uid)
        log.warning("dropped a request: %s: %s", type(exc).__name__, _one_line(exc))
        _reply_error(conn, exc)
        return False
    conn.settimeout(REQUEST_READ_TIMEOUT_S)  # for the reply
    op = header.get("op")
    state = ctx.state
    with ctx.count_lock:
        state["requests"] += 1
    stop = False
    try:
        if header.get("version") != PROTOCOL_VERSION:
            raise ValueError(
                f"protocol version {header.get('version')!r}; this worker speaks {PROTOCOL_VERSION}"
            )
        if op == "ping":
            reply = {
                **state,
                "uptime_s": time.time() - state["started"],
                "cached": [list(map(str, k)) for k in list(ctx.cache.items)],
            }
            _send_message(conn, {"status": "ok", **reply})
        elif op == "shutdown":
            _send_message(conn, {"status": "ok", "pid": state["pid"]})
            stop = True
        elif op in ("info", "denoise"):
            name = header.get("name")
            options = header.get("options") or {}
            if not isinstance(name, str) or not isinstance(options, dict):
                raise ValueError("request needs 'name' (string) and 'options' (object)")
            with ctx.load_lock:
                denoiser = ctx.cache.get(name, options)
            t_load = time.perf_counter()
            if op == "info":
                _send_message(conn, {"status": "ok", "info": _info_dict(denoiser)})
            else:
                volume = _volume_from(header, payload)
                del payload
                with ctx.run_lock:  # one denoiser call at a time (one GPU)
                    t_start = time.perf_counter()
                    out = np.ascontiguousarray(denoiser(volume), dtype="<f4")
                    t_run = time.perf_counter()
                if out.shape != volume.shape:
                    raise ValueError(
                        f"denoiser {name!r} returned shape {out.shape} for {volume.shape}"
                    )
                seconds = {"load": t_load - t0, "queue": t_start - t_load, "denoise": t_run - t_start}
                _send_message(
                    conn,
                    {
                        "status": "ok",
                        "shape": list(out.shape),
                        "dtype": "<f4",
                        "nbytes": out.nbytes,
                        "info": _info_dict(denoiser),
                        "seconds": seconds,
                    },
                    memoryview(out).cast("B"),
                )
                log.info(
                    "%s %s: load %.3f s, queue %.3f s, denoise %.3f s",
                    name,
                    list(out.shape),
                    seconds["load"],
                    seconds["queue"],
                    seconds["denoise"],
                )
        else:
            raise ValueError(f"unknown op {op!r}; known: denoise, info, ping, shutdown")
    except (BrokenPipeError, ConnectionResetError) as exc:
        log.warning("client went away during %s: %s", op, _one_line(exc))
    except Exception as exc:  # noqa: BLE001 (a bad request must not kill the worker)
        log.warning("request %s failed: %s: %s", op, type(exc).__name__, _one_line(exc))
        _reply_error(conn, exc)
    return stop


def _reply_error(conn: socket.socket, exc: BaseException) -> None:
    with contextlib.suppress(OSError):
        conn.settimeout(5.0)
        _send_message(
            conn, {"status": "error", "type": type(exc).__name__, "error": _one_line(exc)}
        )


__all__ = [
    "UntrustedWorker",
    "WorkerError",
    "default_socket_path",
    "denoise_timeout_s",
    "ensure_worker",
    "ping",
    "request_denoise",
    "request_info",
    "serve",
    "start_worker",
    "stop_worker",
]
