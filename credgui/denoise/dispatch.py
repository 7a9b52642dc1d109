"""One denoiser for the hook: the warm worker when one answers, this process otherwise.

``open_denoiser(name, options, socket_path=...)`` returns an object with the ``Denoiser``
protocol (``.info``, ``__call__``). With a worker listening on ``socket_path`` it never
imports torch in the calling process (``credgui.denoise.worker``'s client is stdlib + numpy);
without one it builds the plugin here (``registry.create_denoiser``), once, on first need.

Failure policy: an error the worker *reports* (bad weights file, unknown plugin, a bad
volume) is raised as ``WorkerError``: running the same thing here would fail the same way.
A *transport* failure (worker died mid-request, no answer in time) falls back to denoising
in this process, logged as a warning, unless ``fallback=False``: RELION waits for the hook
with no timeout, so finishing slower beats hanging or aborting the refinement. The waits are
bounded (``timeout_s``, default: ``worker.INFO_TIMEOUT_S`` for info, ``worker.denoise_timeout_s``
of the volume for denoise). A socket of another user (``UntrustedWorker``) is an error, never
a fallback: the configuration points at something it should not.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from credgui.denoise.base import Denoiser, DenoiserInfo
from credgui.denoise.worker import INFO_TIMEOUT_S, WorkerError, request_denoise, request_info

log = logging.getLogger(__name__)


class WorkerBackedDenoiser:
    """The ``Denoiser`` protocol over the warm worker, with an in-process fallback.

    used_worker: whether the last ``__call__`` was answered by the worker.
    seconds: wall time of the last ``__call__`` (s).
    worker_seconds: the worker's own timings of the last answered call ({"load", "denoise"}).
    """

    info: DenoiserInfo

    def __init__(
        self,
        name: str,
        options: dict[str, Any] | None,
        socket_path: str | Path | None,
        *,
        timeout_s: float | None = None,
        fallback: bool = True,
    ) -> None:
        self.name = name
        self.options = dict(options or {})
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.fallback = fallback
        self.used_worker = False
        self.seconds = 0.0
        self.worker_seconds: dict[str, float] = {}
        self._local: Denoiser | None = None
        self.info = self._fetch_info()

    def _local_denoiser(self) -> Denoiser:
        if self._local is None:
            # imported here: importlib.metadata costs ~25 ms the worker path need not pay
            from credgui.denoise.registry import create_denoiser

            denoiser = create_denoiser(self.name, self.options)
            if denoiser is None:
                raise ValueError(f"denoiser {self.name!r} has no network (the hook skips it)")
            self._local = denoiser
        return self._local

    def _transport_failed(self, exc: WorkerError) -> None:
        if exc.remote_type is not None or not self.fallback:
            raise exc
        log.warning("%s; denoising in this process instead", exc)
        self.socket_path = None  # do not wait on that worker again in this process

    def _fetch_info(self) -> DenoiserInfo:
        if self.socket_path:
            try:
                fields = request_info(
                    self.socket_path, self.name, self.options,
                    timeout_s=INFO_TIMEOUT_S if self.timeout_s is None else self.timeout_s,
                )
            except WorkerError as exc:
                self._transport_failed(exc)
                fields = None
            if fields is not None:
                return DenoiserInfo(**{**fields, "name": fields.get("name") or self.name})
        return self._local_denoiser().info

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        if self.socket_path:
            reply: dict[str, Any] = {}
            try:
                out = request_denoise(
                    self.socket_path,
                    self.name,
                    self.options,
                    volume,
                    timeout_s=self.timeout_s,
                    reply=reply,
                )
            except WorkerError as exc:
                self._transport_failed(exc)
                out = None
            if out is not None:
                self.used_worker = True
                self.worker_seconds = dict(reply.get("seconds") or {})
                self.seconds = time.perf_counter() - t0
                return out
        self.used_worker = False
        out = np.asarray(self._local_denoiser()(volume), dtype=np.float32)
        self.seconds = time.perf_counter() - t0
        return out


def open_denoiser(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    socket_path: str | Path | None = None,
    timeout_s: float | None = None,
    fallback: bool = True,
) -> WorkerBackedDenoiser | None:
    """The denoiser ``name`` (None for ``"none"``), served by the worker at ``socket_path`` if any.

    ``options``: the plugin's options (for ``unet``: weights, device, threads, ...).
    ``.info`` is known on return (asked from the worker, or from the plugin built here).
    """
    if name == "none":
        return None
    return WorkerBackedDenoiser(name, options, socket_path, timeout_s=timeout_s, fallback=fallback)


__all__ = ["WorkerBackedDenoiser", "open_denoiser"]
