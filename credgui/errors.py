"""One error type for bad input: it always names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A file credgui reads is missing or wrong.

    ``str(err)`` is one line, ``"<path>: <what is wrong>"``, ready for stderr or a status bar.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
