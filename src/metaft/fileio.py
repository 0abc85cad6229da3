"""Writing result files so that a crash, a kill or a full disk never leaves half a file behind.

Every writer goes through :func:`atomic_path`: write a hidden temporary file beside the target, then rename it
over the target (readers see the old file or the new one). Checkpoint *folders* are swapped by
:func:`metaft.modeling.save_atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import writing


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    The temporary name carries the process id (two processes may write one shared cache file) and ends in
    ``.tmp``. An operating-system error (full disk, no permission) becomes an OutputError naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_json(path: str | Path, data: Any, sort_keys: bool = False, ensure_ascii: bool = True) -> None:
    """Indented JSON, written atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n")
