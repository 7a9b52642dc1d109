"""The one atomic writer: every file credgui writes for another reader goes through here.

``atomic_open(path)`` yields a binary file object on a temp file created by
``tempfile.mkstemp`` (O_CREAT | O_EXCL, unpredictable name ``.NAME.XXXXXXXX.tmp``) in the
target's own directory; on a clean exit the temp file gets the permissions a new file would
get (0666 less the umask), is flushed (fsync with ``durable=True``) and renamed over ``path``
with ``os.replace``; on any exception it is removed and ``path`` is untouched.

Trust rules (see docs/SECURITY.md):

- The temp file is opened by us with O_EXCL, so a symlink or file planted at a guessable name
  is never followed nor reused; the data goes through our own file descriptor, never through
  a name another user could swap.
- ``os.replace`` replaces a symlink at ``path`` itself (it never writes through it): the final
  file is always a regular file owned by the writer.

``append_line(path, line)``: one ``write`` of one complete line on an O_APPEND descriptor
(concurrent writers never interleave a line); if the file's last line is torn (no newline,
e.g. after a full disk) a newline is written first so the new record stands on its own line.
A short write raises ``OSError`` (the caller treats the record as not logged).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["append_line", "atomic_open", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every
    thread: a GUI thread writing a file meanwhile could get the wrong permissions)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, *, durable: bool = False, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces ``path`` atomically when the block exits cleanly.

    ``mode``: permission bits of the result (default 0666 & ~umask, as ``open`` would give).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), (0o666 & ~_umask()) if mode is None else mode)
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, **kwargs: Any) -> None:
    with atomic_open(path, **kwargs) as fh:
        fh.write(data)


def write_text_atomic(path: str | Path, text: str, **kwargs: Any) -> None:
    write_bytes_atomic(path, text.encode(), **kwargs)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 1, sort_keys: bool = False,
                      allow_nan: bool = False, **kwargs: Any) -> None:
    """``data`` as JSON written atomically (``allow_nan=False``: NaN/Infinity is a ValueError)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n"
    write_text_atomic(path, text, **kwargs)


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` (no newline in it) plus a newline to ``path`` in one ``write``."""
    if "\n" in line:
        raise ValueError("append_line: the line holds a newline")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        data = (line + "\n").encode()
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path} ({written} of {len(data)} bytes)")
    finally:
        os.close(fd)
