"""Many runs of one stage in banks: :func:`run_packed`, and the pending stage-3 run (:class:`PreparedRun`).

Runs that can share a bank (see :func:`metaft.bank_plan.bank_key`) are trained together by
:class:`metaft.bank.Bank`, as many per bank as fit in memory or ``pack`` at most; a run that a bank cannot train
as the one-run path would (:func:`metaft.bank_plan.unpackable`) takes the one-run path. Every run folder ends
up as the one-run path (:func:`metaft.stages.finetune`) writes it: ``config.json``, ``inputs.json``,
``metrics.jsonl``, ``best/`` (the one-run path's folder: plain HF, or pooled with its code file) and
``results.json`` with the same keys, written last, so a bank killed midway leaves no folder that looks finished.

Timings: a banked run's ``timings.train_s`` (stage 2: ``wall_time_s``) is its share of its bank's training
time (the bank's time / its runs), ``total_s`` adds its own data preparation, its share of building the bank
and its own test evaluation (``eval_s``).

Resuming: a bank saves its whole state in its first run's ``state/`` folder (:mod:`metaft.checkpoints`); a
rerun whose pending runs include every run of a saved bank, with the same settings, resumes that bank; any
other unfinished run starts over. A run that diverges inside a bank is stopped alone and, as in the one-run
path, gets no results (its last best checkpoint is kept); once every other run is done, :func:`run_packed`
raises a :class:`metaft.evaluation.NonFiniteError` naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .bank import Bank, Member
from .bank_plan import bank_capacity, bank_key, model_config, parameter_count, plan_banks, unpackable
from .checkpoints import STATE_DIR, load_bank_state, read_bank_info, truncate_metrics
from .config import FinetuneConfig
from .errors import ConfigError
from .evaluation import NonFiniteError
from .features import EncodedDataset
from .fileio import recover_folder
from .heads import resolve_normalize, resolve_pooling, save_classifier
from .hub import load_tokenizer, usable_max_length
from .locking import run_lock
from .modeling import load_classifier
from .prepared import domain_splits, label_set, task_name_for
from .results import RESULTS, FinetuneResult, read_finetune_result
from .runs import IGNORED_ON_RESUME, finish_run, open_run, start_run
from .scoring import evaluate_checkpoint
from .steps import derive_seed, seeded
from .training import keep_freed_memory
from .warmstart import probe_warm_start

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankShare:
    """One run's share of its bank: training seconds, seconds of building and training, the resumed step."""

    train_s: float
    wall_s: float
    resumed_from: int | None = None


class PreparedRun:
    """A pending stage-3 run: its data read and encoded, its model not loaded yet."""

    bank_class = Bank
    results_file = RESULTS
    read_result = staticmethod(read_finetune_result)

    def __init__(self, cfg: FinetuneConfig):
        started = time.monotonic()
        self.cfg, self.run_dir, self.data_dir = cfg, Path(cfg.out), Path(cfg.data_dir)
        self.splits = domain_splits(cfg, self.data_dir)
        self.labels = label_set(self.data_dir, self.splits["train"],
                                {k: v for k, v in self.splits.items() if k != "train"})
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.config = model_config(cfg.model, cfg.trust_remote_code)
        max_length = usable_max_length(cfg.max_length, self.config, self.tokenizer)
        label_ids = {lab: i for i, lab in enumerate(self.labels)}
        self.sets = {k: EncodedDataset(v, self.tokenizer, max_length, label_ids, None, None, cfg.use_cache)
                     for k, v in self.splits.items()}
        self.key = bank_key(cfg, len(self.sets["train"]), len(self.labels), self.config)
        self.pooling, self.probe = resolve_pooling(cfg.head_pooling, cfg.model), None
        self.normalize = resolve_normalize(cfg.head_normalize, self.pooling, cfg.model)
        self.prepare_s = time.monotonic() - started

    def load_model(self):
        cfg = self.cfg
        with seeded(cfg.seed):  # as stages.finetune: the seeded head re-initialisation
            model = load_classifier(cfg.model, self.labels, head=cfg.head, dropout=cfg.dropout, seed=cfg.seed,
                                    pooling=self.pooling, normalize=self.normalize,
                                    trust_remote_code=cfg.trust_remote_code)
        if cfg.head == "probe":  # as stages.warm_start: fitted on this run's own frozen features
            self.probe = probe_warm_start(model, self.sets["train"], self.sets["dev"], cfg.eval_batch_size)
        return model

    def save(self, model, folder: Path) -> None:
        save_classifier(model, folder)
        self.tokenizer.save_pretrained(folder)

    def member(self) -> Member:
        return Member(self.cfg, self.run_dir, self.sets["train"], self.sets["dev"], self.labels,
                      self.load_model, self.save)

    def stale(self, member: Member) -> list[Path]:
        """Folders to remove when the run is finished (none for stage 3)."""
        return []

    def results(self, member: Member, total_steps: int, share: BankShare) -> FinetuneResult:
        """The one-run path's results, with the best checkpoint tested from its folder."""
        cfg, best_dir = self.cfg, self.run_dir / member.best["name"]
        t0 = time.monotonic()
        test = evaluate_checkpoint(best_dir, self.sets["test"], cfg, self.labels) if "test" in self.sets else None
        eval_s = time.monotonic() - t0
        return FinetuneResult(
            task=cfg.task_name or task_name_for(self.data_dir), domain=self.splits["train"][0].domain,
            model=cfg.model, head=cfg.head, seed=cfg.seed, test_accuracy=test["accuracy"] if test else None,
            test_macro_f1=test["macro_f1"] if test else None, test=test, best_dev_accuracy=member.best["accuracy"],
            best_dev_macro_f1=member.best["dev"]["macro_f1"], best_step=member.best["step"],
            total_steps=total_steps, best_model=str(best_dir), labels=self.labels,
            num_examples={k: len(v) for k, v in self.splits.items()},
            timings={"train_s": round(share.train_s, 3), "eval_s": round(eval_s, 3),
                     "total_s": round(self.prepare_s + share.wall_s + eval_s, 3)},
            resumed_from=share.resumed_from, dev_history=member.history, config=cfg.to_dict(),
            head_pooling=self.pooling, head_normalize=self.normalize, head_probe=self.probe)


def bank_identity(runs: Sequence) -> dict:
    """What a saved bank state belongs to: its runs' folders and settings (as JSON would read them back)."""
    return json.loads(json.dumps({
        "runs": [str(run.run_dir.resolve()) for run in runs], "key": runs[0].key,
        "settings": [{k: v for k, v in run.cfg.to_dict().items() if k not in IGNORED_ON_RESUME} for run in runs]}))


def train_bank(runs: list, saved: dict | None = None) -> tuple[list, list[str]]:
    """Train ``runs`` (prepared runs of one bank key) together, from the saved bank state ``saved`` (its
    ``bank.json``) or from the start; write each finished run's results. Returns the results (None for a run
    that diverged) and why each diverged run was stopped."""
    started = time.monotonic()
    state_dir = runs[0].run_dir / STATE_DIR
    if saved is None:
        for run in runs:
            start_run(run.run_dir, run.cfg, "new")  # an unfinished earlier run there is started over
    members = [run.member() for run in runs]
    with seeded(derive_seed("bank", *(str(run.run_dir) for run in runs))):  # the runs' dropout streams
        bank = runs[0].bank_class(members, state_dir=state_dir, identity=bank_identity(runs))
        if saved is not None:
            load_bank_state(state_dir, bank.params, bank.optimizer, bank.scheduler)
            bank.restore(saved)
            for run in runs:
                truncate_metrics(run.run_dir, bank.step)  # records after the saved state are logged again
            logger.info("resuming a bank of %d runs at step %d of %d", bank.size, bank.step, bank.total_steps)
        logger.info("bank of %d runs x %d steps (%.1f M parameters each)", bank.size, bank.total_steps,
                    sum(p[0].numel() for p in bank.params.values()) / 1e6)
        build_s = time.monotonic() - started
        train_s = bank.train()
    share = BankShare(train_s / bank.size, (build_s + train_s) / bank.size, saved["step"] if saved else None)
    total_steps, diverged = bank.total_steps, dict(bank.diverged)
    del bank
    out: list = [None] * len(runs)
    for r in reversed(range(len(runs))):  # the first run last: its folder holds the bank's state
        if r not in diverged:
            out[r] = runs[r].results(members[r], total_steps, share)
            finish_run(runs[r].run_dir, runs[r].results_file, out[r], runs[r].stale(members[r]))
    shutil.rmtree(state_dir, ignore_errors=True)
    return out, [diverged[r] for r in sorted(diverged)]


def saved_banks(pending: list, capacities: dict[str, int]) -> list[tuple[list[int], dict]]:
    """Banks to resume: (indices into ``pending``, their ``bank.json``) for each saved bank state whose runs are
    all pending and unfinished, with the same settings, and fit a bank. ``pending``: (run, status) pairs."""
    where = {str(run.run_dir.resolve()): j for j, (run, _) in enumerate(pending)}
    banks, taken = [], set()
    for j, (run, status) in enumerate(pending):
        if status != "resume":
            continue
        recover_folder(run.run_dir / STATE_DIR)
        info = read_bank_info(run.run_dir / STATE_DIR)
        if info is None:
            continue
        idx = [where.get(d) for d in info["identity"].get("runs", [])]
        usable = (idx and idx[0] == j and None not in idx and not taken & set(idx)
                  and all(pending[i][1] == "resume" for i in idx) and len(idx) <= capacities[run.key]
                  and info["identity"] == bank_identity([pending[i][0] for i in idx]))
        if usable:
            banks.append((idx, info))
            taken |= set(idx)
        else:
            logger.info("%s: its saved bank state is for other runs or settings; its runs start over", run.run_dir)
    return banks


def run_packed(cfgs: Sequence, pack: int | None, prepared: type, one_run: Callable,
               on_done: Callable[[int, object], None] | None = None) -> list:
    """Lock every run folder, skip finished runs, prepare the others (``prepared(cfg)``), train them in banks
    (resuming saved banks); ``one_run(cfg)`` for runs a bank cannot train, and for all when ``pack == 1``.
    ``pack``: runs per bank at most (None: as many as fit in memory). ``on_done(i, results)`` is called as the
    run of ``cfgs[i]`` is found finished or finishes. Returns each run's results in the order of ``cfgs``;
    raises NonFiniteError after the others when runs diverged."""
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) != len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        raise ConfigError(f"{dup}: two runs write to this folder; give every run its own out")
    results: dict[int, object] = {}

    def done(i: int, result) -> None:
        results[i] = result
        if on_done is not None:
            on_done(i, result)

    singles = list(range(len(cfgs))) if pack == 1 else [i for i, c in enumerate(cfgs) if unpackable(c)]
    if singles and pack != 1:
        logger.info("%d run(s) take the one-run path (%s)", len(singles), unpackable(cfgs[singles[0]]))
    if len(singles) < len(cfgs) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("packed training runs in one process: drop accelerate launch / torchrun, or pack 1")
    diverged: list[str] = []
    with contextlib.ExitStack() as locks:
        pending = []
        for i, cfg in enumerate(cfgs):
            if i in singles:
                continue
            locks.enter_context(run_lock(cfg.out))
            status = open_run(Path(cfg.out), cfg, prepared.results_file)
            if status == "done":
                done(i, prepared.read_result(Path(cfg.out) / prepared.results_file))
            else:
                pending.append((i, prepared(cfg), status))
        if pending:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if device.type == "cpu":
                keep_freed_memory()
            capacities = {run.key: bank_capacity(parameter_count(run.config, len(run.labels)), device, pack)
                          for _, run, _ in pending}
            resumable = saved_banks([(run, status) for _, run, status in pending], capacities)
            taken = {j for idx, _ in resumable for j in idx}
            rest = [j for j in range(len(pending)) if j not in taken]
            fresh = [[rest[k] for k in bank] for bank in plan_banks([pending[j][1].key for j in rest], capacities)]
            for bank, saved in [*resumable, *((bank, None) for bank in fresh)]:
                out, why = train_bank([pending[j][1] for j in bank], saved)
                diverged += why
                for j, result in zip(bank, out):
                    if result is not None:
                        done(pending[j][0], result)
    for i in singles:
        done(i, one_run(cfgs[i]))
    if diverged:
        raise NonFiniteError(f"{len(diverged)} run(s) of a bank diverged: {'; '.join(diverged)}")
    return [results[i] for i in range(len(cfgs))]
