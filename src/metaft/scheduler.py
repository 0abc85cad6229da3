"""Running the units of a study: each as soon as the meta stage it starts from is done, several at a time in
worker processes (spawned; they die with the study process), with a time estimate after each unit.

Finished units (their results file exists) are reported, not rerun, so an interrupted study resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import (
    BASELINE,
    META_RESULTS,
    RESULTS,
    FinetuneResult,
    MetaResult,
    read_finetune_result,
    read_meta_result,
)

logger = logging.getLogger(__name__)

# ``cfg`` below is the study's StudyConfig (force, jobs, model, meta and finetune settings)
RunUnit = Callable[[Any, "Unit", str, str], Any]  # (study config, unit, model, group) -> its results


@dataclass(frozen=True)
class Unit:
    """One training run of the study: a meta stage (``domain`` None) or a fine-tuning run."""

    seed: int
    variant: str
    domain: str | None
    data: Path
    out: Path

    @property
    def needs(self) -> tuple[int, str, None] | None:
        """The meta stage this fine-tuning run starts from (None: the baseline and meta stages need nothing)."""
        return None if self.domain is None or self.variant == BASELINE else (self.seed, self.variant, None)

    @property
    def key(self) -> tuple[int, str, str | None]:
        return self.seed, self.variant, self.domain

    @property
    def results_file(self) -> Path:
        return self.out / (RESULTS if self.domain else META_RESULTS)

    def results(self) -> MetaResult | FinetuneResult | None:
        """The unit's results file, read (None while it has none)."""
        return read_meta_result(self.results_file) if self.domain is None else read_finetune_result(self.results_file)


def unit_name(unit: Unit) -> str:
    """``seed 42 mft SST-2`` (a meta stage: no domain), for progress lines."""
    return f"seed {unit.seed} {unit.variant}{f' {unit.domain}' if unit.domain else ''}"


def finished_results(cfg, unit: Unit) -> MetaResult | FinetuneResult | None:
    """The results of a finished unit (None if it has none yet, or under ``force``)."""
    return None if cfg.force else unit.results()


def meta_snapshot(meta_unit: Unit, results: MetaResult) -> str:
    """The best meta-learner folder of a finished meta stage (what its fine-tuning runs start from)."""
    return str((meta_unit.out / results.best_model_name).resolve())


def resolve_jobs(jobs: int) -> int:
    """``0`` = automatic: 2 on a CPU-only machine with 2+ cores (few-shot steps are too small to keep two
    cores busy in one process), else 1 (one GPU; or several processes under ``accelerate launch``)."""
    if jobs > 0:
        return jobs
    import torch

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return 2 if not torch.cuda.is_available() and not distributed and (os.cpu_count() or 1) >= 2 else 1


def _worker_init(threads: int, log_level: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(Exception):  # Linux: die with the study process (no orphan keeps a unit locked)
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def unit_work(cfg, unit: Unit) -> float:
    """A unit's training work in examples seen (epochs x training examples), to weight the time estimate."""
    stage = cfg.meta if unit.domain is None else cfg.finetune
    with open(unit.data / "train.tsv", encoding="utf-8") as fh:
        examples = sum(1 for line in fh if line.strip())
    return stage.epochs * min(examples, stage.train_limit or examples)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def execute(cfg, plan: list[Unit], group: str, on_done, run_unit: RunUnit) -> None:
    """Run the unfinished units of ``plan``, ``resolve_jobs(cfg.jobs)`` at a time in worker processes,
    each as soon as the meta stage it starts from is done: ``run_unit(cfg, unit, model, group)`` (a module-level
    function, so worker processes can import it) trains one unit and returns its results; ``on_done(unit,
    results)`` is called as each one completes. Finished units are not rerun (they are reported first, in plan
    order)."""
    snapshots: dict[tuple, str] = {}  # meta stages done: key -> best meta-learner folder
    # units run by this call; the estimate: work left / (work done per second a worker was busy x workers)
    progress = {"done": 0, "start": time.monotonic(), "work_done": 0.0, "busy_s": 0.0, "jobs": 1}
    work: dict[tuple, float] = {}  # unit key -> unit_work, of the units this call runs

    def model_for(unit: Unit) -> str:
        return cfg.model if unit.needs is None else snapshots[unit.needs]

    def finish(unit: Unit, res: MetaResult | FinetuneResult, busy_s: float | None = None) -> None:
        if unit.domain is None:
            snapshots[unit.key] = meta_snapshot(unit, res)
        on_done(unit, res)
        if busy_s is not None:  # run by this call (not found finished)
            progress["done"] += 1
            progress["work_done"] += work[unit.key]
            progress["busy_s"] += busy_s
            rate = progress["work_done"] / max(progress["busy_s"], 1e-9) * progress["jobs"]
            left = sum(work.values()) - progress["work_done"]
            logger.info("%d of %d units done (%s), %s elapsed, about %s to go", progress["done"], len(work),
                        unit_name(unit), _duration(time.monotonic() - progress["start"]), _duration(left / rate))

    todo = []
    for unit in plan:
        if finished_results(cfg, unit) is not None and (unit.needs is None or unit.needs in snapshots):
            finish(unit, run_unit(cfg, unit, model_for(unit), group))  # a finished unit: checked, not rerun
        else:
            todo.append(unit)
    jobs = min(resolve_jobs(cfg.jobs), len(todo)) if todo else 1
    progress["jobs"] = jobs
    work.update((unit.key, unit_work(cfg, unit)) for unit in todo)
    if jobs <= 1:
        while todo:
            unit, started = todo.pop(0), time.monotonic()
            finish(unit, run_unit(cfg, unit, model_for(unit), group), time.monotonic() - started)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    logger.info("running %d units, %d at a time (%d thread(s) each)", len(todo), jobs, threads)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, logging.getLogger().getEffectiveLevel())) as pool:
        running: dict = {}  # future -> (unit, start time)
        while todo or running:
            for unit in [u for u in todo if u.needs is None or u.needs in snapshots][:jobs - len(running)]:
                todo.remove(unit)
                running[pool.submit(run_unit, cfg, unit, model_for(unit), group)] = (unit, time.monotonic())
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                unit, started = running.pop(future)
                try:
                    finish(unit, future.result(), time.monotonic() - started)
                except BaseException:
                    for other in running:
                        other.cancel()
                    raise
