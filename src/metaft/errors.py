"""Errors meant for users: one clear line, no traceback (the CLI prints them and exits with code 2)."""

from __future__ import annotations

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
