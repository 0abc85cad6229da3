"""The run folder of one training stage: refuse, resume or start it, write its settings, mark it finished.

A run folder holds ``config.json`` (the settings), ``metrics.jsonl``, checkpoints, the training state while
unfinished and a results file once finished. A resumed run must keep the settings that shape its results
and the inputs it trained on (``inputs.json``: split files, typicality scores, start model).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from .checkpoints import METRICS_FILE, STATE_DIR
from .devices import process_state
from .errors import ConfigError
from .inputs import check_inputs, record_inputs, stage_inputs
from .locking import LOCK_FILE
from .results import FinetuneResult, MetaResult, write_result

logger = logging.getLogger(__name__)


CONFIG_FILE = "config.json"


IGNORED_ON_RESUME = ("out", "resume", "force", "use_cache", "save_state_every_s")  # a resumed run may change


def is_run_folder(run_dir: Path) -> bool:
    try:
        saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"data_dir", "epochs", "seed"} <= set(saved)


def _has_contents(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def open_run(run_dir: Path, cfg, done_file: str) -> str:
    """What to do with ``run_dir`` for a run of ``cfg``: ``"new"``, ``"resume"`` or ``"done"``. Changes nothing.

    A finished run (``done_file`` exists) is refused unless ``cfg.force`` (start over: ``"new"``) or
    ``cfg.resume`` (``"done"``: nothing to do). An unfinished one needs ``cfg.resume`` or ``cfg.force``.
    """
    run_dir = Path(run_dir)
    if not _has_contents(run_dir):
        return "new"
    if not is_run_folder(run_dir):
        raise ConfigError(f"{run_dir}: not empty and not a metaft run folder; choose another output folder")
    finished = (run_dir / done_file).is_file()
    if cfg.force:
        return "new"
    if not cfg.resume:
        what = "a finished run" if finished else "an unfinished run"
        hint = "--force to overwrite it" if finished else "--resume to continue it or --force to start over"
        raise ConfigError(f"{run_dir}: holds {what}; pass {hint} (or choose another output folder)")
    check_same_config(run_dir, cfg)
    check_inputs(run_dir, stage_inputs(cfg))
    return "done" if finished else "resume"


def start_run(run_dir: Path, cfg, status: str) -> None:
    """Create the run folder of a ``"new"`` run (removing an earlier run there) and write ``config.json``.

    Every process must have called :func:`open_run` before the main process changes the folder.
    """
    run_dir, state = Path(run_dir), process_state()
    state.wait_for_everyone()
    if status == "new" and state.is_main_process:
        if _has_contents(run_dir):
            logger.info("--force: removing the earlier run in %s", run_dir)
            for path in run_dir.iterdir():
                if path.name != LOCK_FILE:  # held by this run
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
        record_inputs(run_dir, stage_inputs(cfg))
        (run_dir / METRICS_FILE).touch()
    state.wait_for_everyone()


def finish_run(run_dir: Path, results_file: str, results: MetaResult | FinetuneResult,
               stale: Sequence[Path] = ()) -> None:
    """Write the results file (atomically; it marks the run finished) and drop the training state."""
    state = process_state()
    if state.is_main_process:
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        write_result(run_dir / results_file, results)
        shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)  # finished: nothing left to resume
    state.wait_for_everyone()


def check_same_config(run_dir: Path, cfg) -> None:
    saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if diff := cfg.changed_from(saved, IGNORED_ON_RESUME):
        raise ConfigError(f"{run_dir}: cannot resume with different settings ({cfg.describe(diff)}); "
                          "use the same settings, or --force to start over")
