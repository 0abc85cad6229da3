"""What a prepared folder or a run was made from, and the refusal when that changed under the same path.

A file edited in place keeps its path, so settings alone cannot tell that a finished result is stale. The
rule everywhere: a prepared folder, a typicality file or a finished / half-finished run whose inputs (source
files, split files, typicality scores, start model) differ from the recorded ones is refused with one line
naming what changed; ``--force`` redoes it. A result is never reused on other inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .errors import ConfigError
from .fileio import sha256_file, write_json

logger = logging.getLogger(__name__)

INPUTS_FILE = "inputs.json"  # in a run folder: SHA-256 of what the run was trained on
_CACHE: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, cached per process by path, size and modification time."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = sha256_file(path)
    return _CACHE[key]


def model_fingerprint(source: str) -> str:
    """SHA-256 over a model folder's ``config.json`` and weight files; a hub id stands for itself."""
    from .hub import check_weight_files, resolve_model

    path = Path(resolve_model(source))
    if not path.is_dir():
        return f"hub:{source}"
    check_weight_files(path)  # a damaged file is named as such, not reported as a changed model
    h = hashlib.sha256()
    for file in sorted([*path.glob("*.safetensors"), path / "config.json"]):
        if file.is_file():
            h.update(f"{file.name}:{file_sha256(file)}\n".encode())
    return h.hexdigest()


def _short(sha: str | None) -> str:
    return "missing" if sha is None else sha[:12]


def describe_changes(saved: dict[str, str], current: dict[str, str]) -> str:
    """``train.tsv 1a2b3c4d5e6f -> 9f8e7d6c5b4a; model ...`` for the entries that differ."""
    names = [k for k in dict.fromkeys([*saved, *current]) if saved.get(k) != current.get(k)]
    return "; ".join(f"{k} {_short(saved.get(k))} -> {_short(current.get(k))}" for k in names)


# ------------------------------------------------------------------------------------------ prepared folders

def check_prepared_folder(folder: Path, files: dict[str, bytes], manifest: dict, force: bool) -> None:
    """Refuse to overwrite a prepared ``folder`` holding other data than ``files`` (name -> new content).

    Writing the same splits again is fine (a study reruns prepare every time); other content means every
    run trained on the folder would become stale, so it takes ``force``.
    """
    changed = []
    for name, content in files.items():
        path = folder / name
        if path.is_file() and file_sha256(path) != hashlib.sha256(content).hexdigest():
            changed.append(name)
    try:
        old = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    old_sources = old.get("sources") if isinstance(old, dict) else None
    sources = manifest.get("sources", {})
    source_diff = describe_changes(old_sources, sources) if isinstance(old_sources, dict) else ""
    if not changed or force:
        if changed:
            logger.warning("%s: --force: overwriting splits of other data (%s)", folder, ", ".join(changed))
        return
    what = f"source files changed ({source_diff})" if source_diff else "the same sources give other splits now"
    raise ConfigError(f"{folder}: holds splits of other data ({', '.join(changed)} would change; {what}); "
                      "runs trained on them would be stale: pass --force to overwrite them and redo those runs, "
                      "or choose another output folder")


# ------------------------------------------------------------------------------------------------ run folders

def record_inputs(run_dir: Path, inputs: dict[str, str]) -> None:
    write_json(Path(run_dir) / INPUTS_FILE, inputs, sort_keys=True)


def check_inputs(run_dir: Path, inputs: dict[str, str]) -> None:
    """Refuse to reuse or resume ``run_dir`` when what it was trained on differs from ``inputs``.

    A run folder from before inputs were recorded has nothing to compare with and passes.
    """
    path = Path(run_dir) / INPUTS_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    if diff := describe_changes(saved, inputs):
        raise ConfigError(f"{run_dir}: was trained on other inputs than the current ones ({diff}); its result "
                          "would be stale: pass --force to redo it (or restore the inputs)")


def stage_inputs(cfg) -> dict[str, str]:
    """SHA-256 of what a stage-2/3 run of ``cfg`` trains on: its split files, its typicality scores (stage 2
    with typicality weights) and its start model. A missing file is left out (it shows as ``missing``)."""
    data_dir = Path(cfg.data_dir)
    files = [data_dir / f"{split}.tsv" for split in ("train", "dev", "test")]
    if getattr(cfg, "typicality", False):
        files.append(data_dir / "typicality.tsv")
    inputs = {path.name: file_sha256(path) for path in files if path.is_file()}
    inputs["model"] = model_fingerprint(cfg.model)
    return inputs
