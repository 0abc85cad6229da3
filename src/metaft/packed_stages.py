"""Stages 2 and 3 for many runs at once (the packed counterparts of :mod:`metaft.stages`):
``finetune_packed([FinetuneConfig, ...], pack=None) -> [results, ...]`` and
``meta_finetune_packed([MetaConfig, ...], pack=None) -> [best folder, ...]``; see :mod:`metaft.packed`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .config import FinetuneConfig, MetaConfig
from .packed import PreparedRun, run_packed
from .packed_meta import PreparedMetaRun
from .results import FinetuneResult
from .stages import finetune, meta_finetune


def finetune_packed(cfgs: Sequence[FinetuneConfig], pack: int | None = None,
                    on_done: Callable[[int, FinetuneResult], None] | None = None) -> list[FinetuneResult]:
    """Stage 3 for every config, banked; returns each run's results (as :func:`metaft.stages.finetune` does),
    in the order of ``cfgs``. ``pack``: runs per bank at most (1 = one at a time, the one-run path; None =
    as many as fit in memory, see :func:`metaft.bank_plan.bank_capacity`). Finished runs are skipped as the
    one-run path skips them (with ``resume``); ``on_done(i, results)`` as each run is done."""
    return run_packed(cfgs, pack, PreparedRun, finetune, on_done)


def meta_finetune_packed(cfgs: Sequence[MetaConfig], pack: int | None = None,
                         on_done: Callable[[int, object], None] | None = None) -> list[Path]:
    """Stage 2 for every config, banked (variants with different loss terms share a bank); returns each run's
    best meta-learner folder, as :func:`metaft.stages.meta_finetune` does, in the order of ``cfgs``."""
    results = run_packed(cfgs, pack, PreparedMetaRun, meta_finetune, on_done)
    return [r if isinstance(r, Path) else Path(cfg.out) / r.best_model_name for cfg, r in zip(cfgs, results)]
