"""Errors meant for users: one clear line, no traceback (the CLI prints them and exits with code 2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class MetaftError(Exception):
    """Base class of every error metaft reports to users as one line."""


class ConfigError(MetaftError):
    """A setting is invalid; the message says what to change."""


class DataError(MetaftError):
    """Bad input data. Formats as ``file:line: problem`` (line omitted when unknown)."""

    def __init__(self, path: str | Path | None, problem: str, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.problem = problem
        where = self.path or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # picklable, so that a worker process can report it
        return type(self), (self.path, self.problem, self.line)


class OutputError(MetaftError):
    """Results or checkpoints could not be written (disk full, no permission); earlier files are kept."""


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an operating-system error while writing ``path`` (full disk, no permission) into an OutputError."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
