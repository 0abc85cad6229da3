"""One writer per output folder: an exclusive advisory lock held while a run writes there.

The lock is ``flock`` on ``<folder>/.metaft.lock``: the operating system releases it when the process ends
in any way (even ``kill -9``), so a crashed run never leaves a stale lock behind. The file itself stays and
names the last holder. Where ``fcntl`` does not exist (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

LOCK_FILE = ".metaft.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux / macOS
    fcntl = None


@contextlib.contextmanager
def run_lock(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if missing) for the block; refuse if another process holds it.

    ``enabled=False`` (e.g. the non-main processes of a distributed run) takes no lock.
    """
    if not enabled or fcntl is None:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ConfigError(f"{folder}: another metaft run ({holder}) is writing to this folder; wait for "
                              "it to finish or choose another output folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock
