"""File handling: writing files and folders so that a crash, a kill or a full disk never leaves half of one.

Every file writer goes through :func:`atomic_path`: write a hidden temporary file beside the target, then
rename it over the target (readers see the old file or the new one). Checkpoint *folders* are swapped by
:func:`save_atomic` and repaired by :func:`recover_folder`. :func:`sha256_file` fingerprints inputs;
:func:`load_config_file` reads a YAML / JSON settings file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputError, writing


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


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def save_atomic(save_fn: Callable[[Path], None], folder: str | Path) -> None:
    """Write a folder so that a crash at any point leaves either the old or the new version.

    ``save_fn`` writes into a temporary sibling; files are fsynced; the old folder is moved aside,
    the new one renamed into place, and the old one removed. :func:`recover_folder` restores the old
    version if a crash happened between the two renames.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        recover_folder(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_fn(tmp)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    except Exception as exc:  # OSError, but safetensors and torch.save report a full disk as their own errors
        with contextlib.suppress(OSError):
            recover_folder(folder)
        kept = "; the previous version is kept" if folder.exists() else ""
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise OutputError(f"{folder}: cannot save ({why}){kept}") from exc
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(folder: str | Path) -> None:
    """Undo a save interrupted between its two renames (see :func:`save_atomic`)."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if old.is_dir():
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(folder)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> dict | None:
    """The JSON content of ``path``; None when the file is missing or not valid JSON (e.g. cut short)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON settings file into a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - parser errors vary; report them as one line
        raise ConfigError(f"{path}: cannot parse config ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of settings")
    return data
